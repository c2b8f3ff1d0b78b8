"""``/v1/chat/completions`` and ``/v1/completions``: one episode per request, answered whole or streamed.

A request that samples runs as its own task: when the client leaves (non-streaming: the server
hears ``http.disconnect``; streaming: the stream is closed) the task is cancelled and every
upstream stream it had open is closed at once. When a shutdown's grace ends, a stream that has
begun ends with an error event (a request not yet answered is answered 503 by the middleware).
Once the client has its whole answer, its episode may be sampled on in the shadow (:mod:`..shadow`).
An ``Idempotency-Key`` keeps the :class:`Answer` as sent (in process, or in Redis with ``--state``);
with ``--upstream-session-header`` every upstream request of the episode names its request id.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from starlette.background import BackgroundTask

from ...live.transport import extra_headers
from ..episodes import EpisodeResult
from ..errors import ApiError, error_body
from ..options import HEADER_POLICY, HEADER_SETTINGS, resolve_options
from ..responses import chat_completion, chat_stream, sse, text_completion, text_stream
from ..schemas import parse_request
from ..server import shutting_down
from ..state import AppState, Ctx

__all__ = ["router", "result_size", "Answer"]

log = logging.getLogger("optscale.serve")
router = APIRouter()


@router.post("/v1/chat/completions")
async def chat_completions(request: Request, ctx: Ctx):
    return await generate(request, ctx, "chat")


@router.post("/v1/completions")
async def completions(request: Request, ctx: Ctx):
    return await generate(request, ctx, "completion")


@dataclass(frozen=True)
class Answer:
    """What a request sends back, as sent: the JSON body (one chunk) or the stream's events, and its log fields.

    This is what an ``Idempotency-Key`` keeps (in process, or in Redis with ``--state``), so a retry
    on any replica gets the first answer byte for byte (its id and ``created`` included).
    """

    chunks: list[str]
    log: dict[str, Any]

    def dumps(self) -> bytes:
        return json.dumps({"chunks": self.chunks, "log": self.log}, separators=(",", ":")).encode()

    @classmethod
    def loads(cls, raw: bytes) -> Answer:
        return cls(**json.loads(raw))


def result_size(answer: Answer) -> int:
    """Roughly the bytes an idempotency entry holds: its text, and a little for the entry."""
    return 1024 + sum(len(c) for c in answer.chunks)


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


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone (the body was read, so the next message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def generate(request: Request, ctx: AppState, kind: str) -> Response:
    config, service = ctx.config, ctx.service
    state = request.scope["state"]
    who = ctx.caller(request)
    if ctx.drain.draining:
        raise shutting_down(config.retry_after_s)
    raw, body = await ctx.bodies.read_json(request)
    req = parse_request(kind, body)
    options = resolve_options(config, req.model, req.optscale, request.headers.get(HEADER_POLICY),
                              request.headers.get(HEADER_SETTINGS), tables=ctx.tables)
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
        await ctx.idempotency.check(who, idem, digest)
    await service.ensure_ready()
    rid = state["request_id"]
    generation = req.generation(config.generation)
    prompt = req.prompt() if kind == "chat" else req.prompt_obj()
    question = req.question()
    question_place = req.question_place()

    created = int(time.time())
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    session = {config.upstream_session_header: rid} if config.upstream_session_header else {}
    sampled: list[EpisodeResult] = []  # the episode this request ran (none for a replay)

    async def sample() -> Answer:
        with service.tracing.request("chat" if kind == "chat" else "text_completion", req.model) as span, \
                extra_headers(session):
            result = await service.run(kind, prompt, question, options, generation, rid, span, question_place)
            if span is not None:
                usage = result.usage()
                span.set_attribute("gen_ai.usage.input_tokens", usage["prompt_tokens"])
                span.set_attribute("gen_ai.usage.output_tokens", usage["completion_tokens"])
                span.set_attribute("optscale.n_used", len(result.samples))
        sampled.append(result)
        if req.stream:
            render = chat_stream if kind == "chat" else text_stream
            chunks = render(result, rid, created, req.model, req.n, include_usage)
        else:
            render = chat_completion if kind == "chat" else text_completion
            chunks = [json.dumps(render(result, rid, created, req.model, req.n), ensure_ascii=False,
                                 allow_nan=False, separators=(",", ":"))]
        return Answer(chunks, _log_fields(result))

    async def episode() -> Answer:
        """The answer with the id and time it was first answered with (a replay repeats them)."""
        try:
            if idem is not None and digest is not None:
                answer, replayed = await ctx.idempotency.run(who, idem, digest, sample)
                state.setdefault("log", {})["idempotent_replay"] = replayed
                return answer
            return await sample()
        finally:
            service.gate.leave()

    def shadow():
        """Shadow sampling of this episode, to run once the client has its answer (None: not this one)."""
        if not sampled:
            return None  # a replay: sampled on when it was first answered
        return ctx.shadow.offer(kind, prompt, question, options, generation, rid, sampled[0])

    service.admit()
    task = asyncio.create_task(episode())
    if req.stream:
        return _EpisodeStream(_events(ctx, task, state, shadow),
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
    answer = task.result()
    state.setdefault("log", {}).update(answer.log)
    later = shadow()
    return Response(answer.chunks[0], media_type="application/json",
                    background=BackgroundTask(later) if later is not None else None)


async def _events(ctx: AppState, task: asyncio.Task, state: dict, shadow: Callable[[], Any]):
    rid = state["request_id"]
    yield ": optscale sampling\n\n"
    cut = asyncio.ensure_future(ctx.drain.cut.wait())
    try:
        while not task.done():
            await asyncio.wait({task, cut}, timeout=ctx.config.keepalive_s, return_when=asyncio.FIRST_COMPLETED)
            if cut.done() and not task.done():  # the shutdown's grace is over: say so, then end
                err = shutting_down(ctx.config.retry_after_s)
                state["status"] = err.status
                yield sse(err.body())
                return
            if not task.done():
                yield ": keep-alive\n\n"
    finally:
        cut.cancel()
    try:
        answer = task.result()
    except ApiError as exc:
        state["status"] = exc.status
        yield sse(exc.body())
        return
    except Exception as exc:
        state["status"] = 500
        log.error("request %s failed unexpectedly: %s", rid, exc, exc_info=exc)
        yield sse(error_body(500, f"internal error (request id {rid})", None, "internal_error"))
        return
    state.setdefault("log", {}).update(answer.log)
    for event in answer.chunks:
        yield event
    later = shadow()  # the stream has been sent
    if later is not None:
        await later()


def _log_fields(result: EpisodeResult) -> dict[str, Any]:
    return {"policy": result.options.name, "n_used": len(result.samples), "n_launched": result.n_launched,
            "stop_reason": result.stop_reason, "completion_tokens": result.usage()["completion_tokens"]}
