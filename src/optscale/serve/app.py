"""The FastAPI app: OpenAI-compatible endpoints in front of the live engine, plus health, readiness and metrics.

Every error is an OpenAI-shaped JSON answer naming the field to fix; nothing a client sends
can crash the server. :func:`create_app` wires the parts: the shared :class:`~.episodes.Service`,
the idempotency store, the body reader and the shutdown's :class:`~.server.Drain`, kept in an
:class:`~.state.AppState` that the routes (:mod:`.routes`) take as a dependency; the middleware
(:mod:`.middleware`) gives every request its id, log line and metrics and an answer whatever happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Mapping
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from .auth import load_client_keys
from .bodies import BodyReader
from .episodes import Service
from .errors import ApiError, error_body
from .idempotency import IdempotencyStore
from .middleware import JsonFormatter, RequestContext
from .routes import ROUTERS
from .replicas import SharedState
from .routes.generate import Answer, result_size
from .server import Drain
from .settings import ServeConfig
from .state import AppState

__all__ = ["create_app", "JsonFormatter"]

CHECK_RETRY_S = 2.0


async def connect_shared(ctx: AppState) -> None:
    """Connect to the replicas' shared state (``--state``) and keep ``Idempotency-Key`` answers there."""
    config = ctx.config
    ctx.shared = await SharedState.connect(config.state, retry_after_s=config.retry_after_s)
    ctx.idempotency = ctx.shared.idempotency(config.idempotency_ttl_s, Answer.dumps, Answer.loads)


def create_app(config: ServeConfig, *, env: Mapping[str, str] | None = None,
               transport: httpx.AsyncBaseTransport | None = None, tracer_provider: Any = None) -> FastAPI:
    """The app for ``config``; ``env`` supplies the client keys variable (default ``os.environ``),
    ``tracer_provider`` an OpenTelemetry TracerProvider (default: the process's global one)."""
    env = os.environ if env is None else env
    keys = load_client_keys(config.api_keys_file, env)
    service = Service(config, transport=transport, tracer_provider=tracer_provider)
    store = IdempotencyStore(config.idempotency_ttl_s, config.idempotency_max_entries, config.idempotency_max_bytes,
                             result_size)
    shared = AppState(config, service, store, BodyReader(config), keys, Drain())

    async def check_until_ready() -> None:
        """Check on start until the first check passes; afterwards readiness is re-checked on demand
        (``/ready`` and requests, at most every ``ready_ttl_s``), so it also comes back after a failure."""
        while not await service.check():
            await asyncio.sleep(CHECK_RETRY_S)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        checker = asyncio.create_task(check_until_ready())
        try:
            if config.state is not None:
                await connect_shared(shared)
            yield
        finally:
            checker.cancel()
            await asyncio.gather(checker, return_exceptions=True)
            if shared.shared is not None:
                await shared.shared.aclose()
            await service.aclose()

    app = FastAPI(title="optscale serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.optscale = shared
    app.state.service = service
    app.state.store = store
    app.state.drain = shared.drain

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return JSONResponse(exc.body(), exc.status, headers=exc.headers)

    @app.exception_handler(404)
    async def not_found(request: Request, exc: Exception):
        return JSONResponse(error_body(404, f"no route {request.method} {request.url.path}", None, "not_found"), 404)

    @app.exception_handler(405)
    async def not_allowed(request: Request, exc: Exception):
        return JSONResponse(error_body(405, f"method {request.method} not allowed on {request.url.path}", None,
                                       "method_not_allowed"), 405)

    for router in ROUTERS:
        app.include_router(router)
    app.add_middleware(RequestContext, service=service, bodies=shared.bodies, drain=shared.drain)
    return app
