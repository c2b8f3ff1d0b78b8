"""The FastAPI app: OpenAI-compatible endpoints in front of the live engine, plus health, readiness and metrics.

Every error is an OpenAI-shaped JSON answer naming the field to fix; nothing a client sends
can crash the server. A request that samples runs as its own task: when the client leaves
(non-streaming: the server hears ``http.disconnect``; streaming: the stream is closed) the
task is cancelled and every upstream stream it had open is closed at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Mapping
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.datastructures import MutableHeaders
from starlette.requests import ClientDisconnect

from ..fit import FitFlag, fit_mle
from ..policies import POLICIES, Decision, Problem, Sample, policy_settings_schema
from .auth import load_client_keys
from .episodes import EpisodeResult, Service, estimates
from ..checks import is_number
from .errors import ApiError, error_body
from .idempotency import IdempotencyStore
from .metrics import CONTENT_TYPE_LATEST
from .responses import chat_completion, chat_stream, sse, text_completion, text_stream
from .schemas import (HEADER_POLICY, HEADER_SETTINGS, OPTION_KEYS, REQUEST_OPTIONS_SCHEMA, SERVER_ONLY, parse_request,
                      resolve_options, table_names)
from .settings import ServeConfig

__all__ = ["create_app", "JsonFormatter"]

log = logging.getLogger("optscale.serve")
access = logging.getLogger("optscale.serve.access")

_RID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
MAX_PLAN_SCORES = 100_000
CHECK_RETRY_S = 2.0


class JsonFormatter(logging.Formatter):
    """One JSON object per log line: time, level, logger, message and the record's ``fields``."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 3), "level": record.levelname.lower(), "logger": record.name,
               "msg": record.getMessage(), **getattr(record, "fields", {})}
        return json.dumps(out, default=str)


class _RequestContext:
    """Request id (``X-Request-Id``, kept when the client sent a sane one), access log line and request metrics."""

    def __init__(self, app: Any, service: Service):
        self.app, self.service = app, service

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
                MutableHeaders(scope=message).append("x-request-id", rid)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            state["status"] = 500
            raise
        finally:
            status = state.get("status") or sent.get("status") or 499  # 499: the client left first
            elapsed = time.perf_counter() - start
            path = scope.get("path", "")
            if path in ("/v1/chat/completions", "/v1/completions"):
                labels = {"model": self.service.config.model, "policy": state.get("policy", "none")}
                self.service.metrics.requests.labels(**labels, status=str(status)).inc()
                self.service.metrics.duration.labels(**labels).observe(elapsed)
            extra = state.get("log", {})
            fields = {"request_id": rid, "method": scope.get("method"), "path": path, "status": status,
                      "duration_ms": round(elapsed * 1000, 2), **extra}
            access.info("%s %s %s %s %.1f ms%s", rid, scope.get("method"), path, status, elapsed * 1000,
                        "".join(f" {k}={v}" for k, v in extra.items()), extra={"fields": fields})


class _EpisodeStream(StreamingResponse):
    """A stream whose episode task is cancelled however the response ends (even if it never started)."""

    def __init__(self, content: Any, task: asyncio.Task, **kwargs: Any):
        super().__init__(content, **kwargs)
        self.task = task

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if not self.task.done():
                self.task.cancel()


class _BodyReads:
    """Request bodies being read at once, at most ``limit``: one more is refused (429), never queued,
    so slow uploads hold at most ``limit x max_body_bytes`` of memory; each read has a deadline."""

    def __init__(self, limit: int, timeout_s: float, max_bytes: int, retry_after_s: int):
        self.limit, self.timeout_s, self.max_bytes, self.retry_after_s = limit, timeout_s, max_bytes, retry_after_s
        self.active = 0

    async def read_json(self, request: Request) -> tuple[bytes, Any]:
        ctype = request.headers.get("content-type", "")
        if ctype.split(";")[0].strip().lower() != "application/json":
            raise ApiError(415, f"send the body as JSON with Content-Type: application/json (got {ctype[:80]!r})",
                           "Content-Type", "unsupported_media_type")
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_bytes:
            raise self._too_large()
        if self.active >= self.limit:
            raise ApiError(429, f"the server is reading {self.limit} request bodies (max_body_reads); retry shortly",
                           None, "too_many_uploads", {"Retry-After": str(self.retry_after_s)})
        self.active += 1
        try:
            raw = await asyncio.wait_for(self._read(request), self.timeout_s)
        except (asyncio.TimeoutError, TimeoutError):
            raise ApiError(408, f"the body did not arrive within {self.timeout_s:g} s (body_timeout_s)", None,
                           "body_timeout") from None
        except ClientDisconnect:
            raise ApiError(499, "the client closed the connection while sending the body", None,
                           "client_closed_request") from None
        finally:
            self.active -= 1
        try:
            return raw, json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise ApiError(400, f"the body is not UTF-8 (byte {exc.start})", None, "invalid_json") from None
        except json.JSONDecodeError as exc:
            raise ApiError(400, f"the body is not valid JSON: {exc.msg} (line {exc.lineno} column {exc.colno})",
                           None, "invalid_json") from None
        except (ValueError, RecursionError) as exc:
            raise ApiError(400, f"the body is not valid JSON: {str(exc)[:200]}", None, "invalid_json") from None

    async def _read(self, request: Request) -> bytes:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_bytes:
                raise self._too_large()
            chunks.append(chunk)
        return b"".join(chunks)

    def _too_large(self) -> ApiError:
        return ApiError(413, f"the body is larger than {self.max_bytes} bytes (max_body_bytes)", None,
                        "body_too_large")


def _result_size(answer: tuple[EpisodeResult, str, int]) -> int:
    """Roughly the bytes an idempotency entry holds: the samples' texts, and a little for every record."""
    result = answer[0]
    return 2048 + sum(512 + len(str(s.get("text") or "").encode()) for s in result.samples) + 256 * len(result.events)


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone (the body was read, so the next message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def create_app(config: ServeConfig, *, env: Mapping[str, str] | None = None,
               transport: httpx.AsyncBaseTransport | None = None, tracer_provider: Any = None) -> FastAPI:
    """The app for ``config``; ``env`` supplies the client keys variable (default ``os.environ``),
    ``tracer_provider`` an OpenTelemetry TracerProvider (default: the process's global one)."""
    env = os.environ if env is None else env
    keys = load_client_keys(config.api_keys_file, env)
    service = Service(config, transport=transport, tracer_provider=tracer_provider)
    store = IdempotencyStore(config.idempotency_ttl_s, config.idempotency_max_entries, config.idempotency_max_bytes,
                             _result_size)
    bodies = _BodyReads(config.max_body_reads, config.body_timeout_s, config.max_body_bytes, config.retry_after_s)

    async def check_until_ready() -> None:
        """Check on start until the first check passes; afterwards readiness is re-checked on demand
        (``/ready`` and requests, at most every ``ready_ttl_s``), so it also comes back after a failure."""
        while not await service.check():
            await asyncio.sleep(CHECK_RETRY_S)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        checker = asyncio.create_task(check_until_ready())
        try:
            yield
        finally:
            checker.cancel()
            await asyncio.gather(checker, return_exceptions=True)
            await service.aclose()

    app = FastAPI(title="optscale serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service
    app.state.store = store

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

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        rid = request.scope.get("state", {}).get("request_id")
        log.exception("request %s failed unexpectedly", rid)
        return JSONResponse(error_body(500, f"internal error (request id {rid})", None, "internal_error"), 500)

    def caller(request: Request) -> str:
        return keys.check(request.headers.get("authorization")) or ""

    # -- generation ------------------------------------------------------------------------
    async def generate(request: Request, kind: str) -> Response:
        state = request.scope["state"]
        who = caller(request)
        raw, body = await bodies.read_json(request)
        req = parse_request(kind, body)
        options = resolve_options(config, req.model, req.optscale, request.headers.get(HEADER_POLICY),
                                  request.headers.get(HEADER_SETTINGS))
        state["policy"] = options.name
        if req.n > options.policy.n_max:
            raise ApiError(400, f"n ({req.n}) is more than the episode's n_max ({options.policy.n_max})", "n",
                           "invalid_request")
        idem = request.headers.get("idempotency-key")
        digest = None
        if idem is not None and config.idempotency_ttl_s > 0:  # a bad key is a 400 before a stream starts
            digest = hashlib.sha256(b"\0".join([
                kind.encode(), raw, (request.headers.get(HEADER_POLICY) or "").encode(),
                (request.headers.get(HEADER_SETTINGS) or "").encode()])).hexdigest()
            store.check(who, idem, digest)
        await service.ensure_ready()
        rid = state["request_id"]
        generation = req.generation(config.generation)
        prompt = req.prompt() if kind == "chat" else req.prompt_obj()
        question = req.question()
        question_place = req.question_place()

        created = int(time.time())

        async def sample() -> tuple[EpisodeResult, str, int]:
            with service.tracing.request("chat" if kind == "chat" else "text_completion", req.model) as span:
                result = await service.run(kind, prompt, question, options, generation, rid, span, question_place)
                if span is not None:
                    usage = result.usage()
                    span.set_attribute("gen_ai.usage.input_tokens", usage["prompt_tokens"])
                    span.set_attribute("gen_ai.usage.output_tokens", usage["completion_tokens"])
                    span.set_attribute("optscale.n_used", len(result.samples))
                return result, rid, created

        async def episode() -> tuple[EpisodeResult, str, int]:
            """The result with the id and time it was first answered with (a replay repeats them)."""
            try:
                if idem is not None and digest is not None:
                    answer, replayed = await store.run(who, idem, digest, sample)
                    state.setdefault("log", {})["idempotent_replay"] = replayed
                    return answer
                return await sample()
            finally:
                service.gate.leave()

        service.admit()
        task = asyncio.create_task(episode())
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return _EpisodeStream(_events(task, kind, req.model, req.n, include_usage, state),
                                  task, media_type="text/event-stream",
                                  headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        watcher = asyncio.create_task(_disconnected(request))
        try:
            await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
            if not task.done():  # the client left: cancel the episode (its streams close) and say so in the log
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                state["status"] = 499
        if state.get("status") == 499:
            return Response(status_code=499)
        result, rid, created = task.result()
        _log_result(state, result)
        render = chat_completion if kind == "chat" else text_completion
        return JSONResponse(render(result, rid, created, req.model, req.n))

    async def _events(task: asyncio.Task, kind: str, model: str, n: int, include_usage: bool, state: dict):
        rid = state["request_id"]
        yield ": optscale sampling\n\n"
        while not task.done():
            await asyncio.wait({task}, timeout=config.keepalive_s)
            if not task.done():
                yield ": keep-alive\n\n"
        try:
            result, rid, created = task.result()
        except ApiError as exc:
            state["status"] = exc.status
            yield sse(exc.body())
            return
        except Exception as exc:
            state["status"] = 500
            log.error("request %s failed unexpectedly: %s", rid, exc, exc_info=exc)
            yield sse(error_body(500, f"internal error (request id {rid})", None, "internal_error"))
            return
        _log_result(state, result)
        render = chat_stream if kind == "chat" else text_stream
        for event in render(result, rid, created, model, n, include_usage):
            yield event

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await generate(request, "chat")

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await generate(request, "completion")

    # -- information -----------------------------------------------------------------------
    @app.get("/v1/models")
    async def models(request: Request):
        caller(request)
        served = await service.upstream_models()
        upstream = [m for m in served or [config.model] if m != config.model]
        aliases = [f"{config.model}+{name}" for name in POLICIES.names()]
        return {"object": "list", "data": [{"id": i, "object": "model", "created": 0, "owned_by": "optscale"}
                                           for i in [config.model, *upstream, *aliases]]}

    @app.get("/v1/optscale/policies")
    async def policies(request: Request):
        caller(request)
        data = []
        tables = table_names(config.tables_dir) if config.tables_dir is not None else []
        for name in POLICIES.names():
            schema = policy_settings_schema(name)
            for key in SERVER_ONLY:
                if key == "table" and config.tables_dir is not None and key in schema["properties"]:
                    schema["properties"][key] = {"type": "string", "enum": tables, "description": (
                        "a stopping table of this server, by file name (one of `tables`)")}
                else:
                    schema["properties"].pop(key, None)
            schema["properties"] = {**REQUEST_OPTIONS_SCHEMA, **schema["properties"]}
            if "required" in schema:
                schema["required"] = [k for k in schema["required"] if k in schema["properties"]]
            data.append({"id": name, "description": schema["description"], "settings_schema": schema})
        return {"object": "list", "data": data, "default": {"policy": config.policy, "n_max": config.n_max},
                "request_options": list(OPTION_KEYS), "tables": tables}

    @app.post("/v1/optscale/plan")
    async def plan(request: Request):
        caller(request)
        _, body = await bodies.read_json(request)
        if not isinstance(body, dict):
            raise ApiError(400, "the body must be a JSON object", None, "invalid_request")
        scores, answers, question = body.pop("scores", None), body.pop("answers", None), body.pop("question", "")
        if not isinstance(question, str):
            raise ApiError(400, "question: a string (the problem, for policies whose prior reads it)", "question",
                           "invalid_request")
        if not isinstance(scores, list) or not scores or len(scores) > MAX_PLAN_SCORES:
            raise ApiError(400, f"give scores: a list of 1 to {MAX_PLAN_SCORES} numbers in [0, 1]", "scores",
                           "invalid_request")
        for i, s in enumerate(scores):
            if not is_number(s, 0.0, 1.0):
                raise ApiError(400, f"must be a number in [0, 1], got {json.dumps(s)[:50]}", f"scores[{i}]",
                               "invalid_request")
        if answers is not None and (not isinstance(answers, list) or len(answers) != len(scores)
                                    or not all(a is None or isinstance(a, str) for a in answers)):
            raise ApiError(400, "answers: a list of strings (or null), one per score", "answers", "invalid_request")
        options = resolve_options(config, config.model, body, request.headers.get(HEADER_POLICY),
                                  request.headers.get(HEADER_SETTINGS), body_place="",
                                  unused=("deadline_s", "max_total_tokens", "return_samples"))
        episode = await service.start(options, Problem(id="plan", question=question), "question")
        decision, used = Decision.CONTINUE, 0
        for i, score in enumerate(scores):
            used += 1
            decision = episode.observe(Sample(float(score), answers[i] if answers else None))
            if decision is Decision.STOP:
                break
        outcome = episode.result()
        fit = fit_mle([scores[:used]])
        est = estimates(outcome)
        return {"policy": options.name, "settings": options.settings, "decision": decision.value, "n_observed": used,
                "n_given": len(scores), "planned": episode.planned, "stop_reason": outcome.stop_reason,
                "chosen_index": outcome.chosen, "n_star": est.get("n_star"), "estimates": est,
                "fit": {"mu": float(fit.mu[0]), "sigma": float(fit.sigma[0]), "converged": bool(fit.converged[0]),
                        "flags": FitFlag.describe(int(fit.flag[0]))}}

    # -- operations ------------------------------------------------------------------------
    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/ready")
    async def ready():
        if not await service.refresh():
            return JSONResponse(error_body(503, f"not ready: {service.ready_error}", None, "not_ready"), 503,
                                headers={"Retry-After": str(config.retry_after_s)})
        return {"status": "ready"}

    @app.get("/metrics")
    async def metrics():
        return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(_RequestContext, service=service)
    return app


def _log_result(state: dict, result: EpisodeResult) -> None:
    state.setdefault("log", {}).update(policy=result.options.name, n_used=len(result.samples),
                                       n_launched=result.n_launched, stop_reason=result.stop_reason,
                                       completion_tokens=result.usage()["completion_tokens"])
