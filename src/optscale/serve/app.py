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

import logging

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
from .replicas import SharedSavings, SharedState
from .routes.generate import Answer, result_size
from .savings import SavingsCounts
from .server import Drain
from .settings import ServeConfig
from .shadow import ShadowRunner
from .state import AppState
from .tables import TableSet
from .traffic import TrafficWriter

__all__ = ["create_app", "JsonFormatter"]

CHECK_RETRY_S = 2.0
log = logging.getLogger("optscale.serve")


async def connect_shared(ctx: AppState) -> None:
    """Connect to the replicas' shared state (``--state``): ``Idempotency-Key`` answers and the savings counts
    live there, and table reloads are broadcast to every replica."""
    config = ctx.config
    ctx.shared = await SharedState.connect(config.state, retry_after_s=config.retry_after_s)
    ctx.idempotency = ctx.shared.idempotency(config.idempotency_ttl_s, Answer.dumps, Answer.loads)
    ctx.savings = ctx.shadow.savings = SharedSavings(ctx.shared)
    if config.tables_dir is not None:
        await ctx.shared.listen_reloads(ctx.on_reload)


def create_app(config: ServeConfig, *, env: Mapping[str, str] | None = None,
               transport: httpx.AsyncBaseTransport | None = None, tracer_provider: Any = None) -> FastAPI:
    """The app for ``config``; ``env`` supplies the client keys variable (default ``os.environ``),
    ``tracer_provider`` an OpenTelemetry TracerProvider (default: the process's global one)."""
    env = os.environ if env is None else env
    keys = load_client_keys(config.api_keys_file, env)
    service = Service(config, transport=transport, tracer_provider=tracer_provider)
    store = IdempotencyStore(config.idempotency_ttl_s, config.idempotency_max_entries, config.idempotency_max_bytes,
                             result_size)
    tables = TableSet(config.tables_dir)
    tables.reload()  # a file refused is logged; a request naming it gets a 400 saying why
    savings = SavingsCounts()
    drain = Drain()
    shadow = ShadowRunner(service, savings, tables, _traffic_writer(config, service))
    drain.on_begin(shadow.cancel_all)  # shadow episodes never hold up a shutdown
    shared = AppState(config, service, store, BodyReader(config), keys, drain, tables, savings, shadow)

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
            await shadow.aclose()
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


def _traffic_writer(config: ServeConfig, service: Service) -> TrafficWriter | None:
    if config.traffic_dir is None:
        return None
    if config.shadow_share == 0:
        log.warning("traffic_dir is set but shadow_share is 0: no traffic will be written")
    m = service.metrics
    return TrafficWriter(config.traffic_dir, int(config.traffic_rotate_mb * 1024 * 1024), config.traffic_rotate_s,
                         on_write=m.traffic_records.inc,
                         on_drop=lambda reason: m.traffic_dropped.labels(reason=reason).inc())
