"""What every request goes through: its id, its access log line and metrics, and an answer whatever happens.

An exception no route handled becomes an OpenAI-shaped 500 here, so the connection stays
usable (uvicorn closes a connection whose app raised, after a response that did not say so:
the client's next request on it failed with ECONNRESET). A request cancelled by the end of a
shutdown's grace is answered 503 with ``Connection: close``. Only a stream that has begun is
cut without an answer by an exception (its client sees the stream break off).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from typing import Any

from fastapi.responses import JSONResponse
from starlette.datastructures import MutableHeaders

from .bodies import BodyReader
from .episodes import Service
from .errors import error_body
from .server import Drain, shutting_down

__all__ = ["RequestContext", "JsonFormatter"]

log = logging.getLogger("optscale.serve")
access = logging.getLogger("optscale.serve.access")

_RID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
GENERATION_PATHS = ("/v1/chat/completions", "/v1/completions")


class JsonFormatter(logging.Formatter):
    """One JSON object per log line: time, level, logger, message and the record's ``fields``."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 3), "level": record.levelname.lower(), "logger": record.name,
               "msg": record.getMessage(), **getattr(record, "fields", {})}
        return json.dumps(out, default=str)


class RequestContext:
    """Request id (``X-Request-Id``, kept when the client sent a sane one), access log line, request metrics,
    the bytes of its body given back at its end, and an answer to every request (see the module)."""

    def __init__(self, app: Any, service: Service, bodies: BodyReader, drain: Drain):
        self.app, self.service, self.bodies, self.drain = app, service, bodies, drain

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        rid = given if _RID.match(given) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = rid
        start = time.perf_counter()
        sent: dict[str, int] = {}

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                sent["status"] = message["status"]
                state["response_started"] = True
                MutableHeaders(scope=message).append("x-request-id", rid)
            await send(message)

        task = asyncio.current_task()
        self.drain.track(task, state)
        try:
            await self.app(scope, receive, send_with_id)
        except asyncio.CancelledError:
            if not state.get("cut") or "status" in sent:
                raise
            state["status"] = 503  # the shutdown's grace is over: answered, not dropped
            cut = shutting_down(self.service.config.retry_after_s)
            await JSONResponse(cut.body(), cut.status, headers=cut.headers)(scope, receive, send_with_id)
        except Exception:
            state["status"] = 500
            if "status" in sent:
                raise  # a stream that has begun: nothing but breaking it off can say so
            log.exception("request %s failed unexpectedly", rid)
            await JSONResponse(error_body(500, f"internal error (request id {rid})", None, "internal_error"),
                               500)(scope, receive, send_with_id)
        finally:
            self.drain.untrack(task)
            self.bodies.release(state)
            status = state.get("status") or sent.get("status") or 499  # 499: the client left first
            elapsed = time.perf_counter() - start
            path = scope.get("path", "")
            if path in GENERATION_PATHS:
                labels = {"model": self.service.config.model, "policy": state.get("policy", "none")}
                self.service.metrics.requests.labels(**labels, status=str(status)).inc()
                self.service.metrics.duration.labels(**labels).observe(elapsed)
            extra = state.get("log", {})
            fields = {"request_id": rid, "method": scope.get("method"), "path": path, "status": status,
                      "duration_ms": round(elapsed * 1000, 2), **extra}
            access.info("%s %s %s %s %.1f ms%s", rid, scope.get("method"), path, status, elapsed * 1000,
                        "".join(f" {k}={v}" for k, v in extra.items()), extra={"fields": fields})

