"""An in-process OpenAI-compatible server that misbehaves on request, for the live sampler's tests.

It serves ``/v1/models``, ``/v1/chat/completions``, ``/v1/completions`` and vLLM's
``/pooling`` on a real socket (uvicorn in a thread), so streams are really opened, cut and
closed. Every response carries a hidden quality ``q`` in its text; its token logprobs, the
judge's P(Yes) and the PRM's step scores all equal ``q``, so every scorer sees the same
score distribution. The final answer is right (``fake_gold(question)``) with probability
``q``. Faults are queued per generation request: ``429``, ``500``, ``drop`` (connection cut
mid-stream), ``truncate`` (stream ends without finishing), ``malformed`` (a bad JSON chunk),
``hang`` (stops sending mid-stream), ``hang_start`` (never answers), ``empty`` (an empty
completion), ``bad_index`` (a choice whose index is not a number), ``negative_usage``,
``huge_usage`` (10**30 tokens), ``float_usage`` (a fractional count), ``echo_key`` (a 401
whose message repeats the Authorization header it got) and ``echo_key_500`` (the same as a
transient 500). The server logs what it sent for each request, and the Authorization header
of every request it received (``auth``), so tests can check the client's token accounting
and where keys go.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import math
import random
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

MODEL = "fake-model"


def _key(text: str) -> str:
    """The problem a prompt is about: its ``Problem <name>:`` tag (templates wrap the question)."""
    m = re.search(r"Problem (\S+?):", text)
    return m.group(1) if m else text


def fake_gold(question: str) -> str:
    """The answer the fake model gives when it is right (tests build datasets with it)."""
    return str(int(hashlib.sha1(_key(question).encode()).hexdigest()[:6], 16) % 1000)


def problem_quality(question: str) -> tuple[float, float]:
    """Per-problem (mean, spread) of the response quality, fixed by the question."""
    h = int(hashlib.sha1(("q" + _key(question)).encode()).hexdigest()[:8], 16)
    return 0.35 + 0.6 * (h % 1000) / 1000, 0.05 + 0.15 * ((h // 1000) % 1000) / 1000


@dataclass
class Served:
    """What the server did for one generation request."""

    fault: str | None
    planned: int
    sent: int = 0
    finished: bool = False
    usage: int | None = None
    disconnected: bool = False


@dataclass
class FakeConfig:
    token_latency: float = 0.0
    first_token_latency: float = 0.0
    end_latency: float = 0.0  # pause after the last token, before the finishing chunk
    min_tokens: int = 8
    max_tokens: int = 24
    faults: list[str | None] = field(default_factory=list)
    models: tuple[str, ...] = (MODEL,)
    logprobs: bool = True
    usage_in_stream: bool = True
    honor_n: bool = True
    prm_shape: str = "steps"  # or "tokens": one output per token instead of per step
    fail_keys: tuple[str, ...] = ()  # problems whose every generation request gets a 500
    seed: int = 0


class FakeServer:
    """The fake server; use as a context manager, read ``base_url``, ``config`` and ``served``."""

    def __init__(self, config: FakeConfig | None = None):
        self.config = config or FakeConfig()
        self.served: list[Served] = []
        self.judged = 0
        self.pooled = 0
        self.auth: list[tuple[str, str | None]] = []  # (path, Authorization header) of every request
        self._rng = random.Random(self.config.seed)
        self._lock = threading.Lock()
        self._streams = threading.Condition()
        self.app = self._build()

    # -- content -------------------------------------------------------------------------
    def _response(self, question: str, limit: int) -> tuple[list[str], float]:
        mu, sd = problem_quality(question)
        with self._lock:
            q = min(0.999, max(0.001, self._rng.gauss(mu, sd)))
            right = self._rng.random() < q
            length = self._rng.randint(self.config.min_tokens, self.config.max_tokens)
        gold = fake_gold(question)
        answer = gold if right else str((int(gold) + 1 + int(q * 97)) % 1000)
        head = [f"q={q:.4f}", "\n\n"]
        filler = [f" w{i}" for i in range(max(0, length - 6))]
        tail = ["\n\n", "The", " answer", f" is \\boxed{{{answer}}}."]
        return (head + filler + tail)[:limit], q

    @staticmethod
    def quality(text: str) -> float | None:
        m = re.search(r"q=(\d\.\d+)", text)
        return float(m.group(1)) if m else None

    # -- app -----------------------------------------------------------------------------
    def _build(self) -> FastAPI:
        app = FastAPI()
        cfg = self.config

        @app.middleware("http")
        async def record_auth(request: Request, call_next):
            self.auth.append((request.url.path, request.headers.get("authorization")))
            return await call_next(request)

        @app.get("/v1/models")
        async def models():
            return {"object": "list", "data": [{"id": m, "object": "model"} for m in cfg.models]}

        @app.post("/pooling")
        async def pooling(request: Request):
            body = await request.json()
            if body.get("model") not in cfg.models:
                return JSONResponse({"error": {"message": f"The model `{body.get('model')}` does not exist."}}, 404)
            inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
            self.pooled += len(inputs)
            data = []
            for i, text in enumerate(inputs):
                q = self.quality(text) or 0.5
                n = text.count("<extra_0>") if cfg.prm_shape == "steps" else len(text.split())
                data.append({"index": i, "object": "pooling", "data": [[1 - q, q] for _ in range(n)]})
            return {"object": "list", "data": data, "usage": {"prompt_tokens": 1, "total_tokens": 1}}

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            return await self._generate(await request.json(), chat=True)

        @app.post("/v1/completions")
        async def completions(request: Request):
            return await self._generate(await request.json(), chat=False)

        return app

    def _error(self, status: int, message: str, headers: dict | None = None) -> JSONResponse:
        return JSONResponse({"error": {"message": message, "code": status}}, status, headers=headers)

    async def _generate(self, body: dict[str, Any], chat: bool):
        cfg = self.config
        if body.get("model") not in cfg.models:
            return self._error(404, f"The model `{body.get('model')}` does not exist.")
        prompt = body["messages"][-1]["content"] if chat else body["prompt"]
        if chat and "Is this solution correct?" in prompt:
            return self._judge(prompt, body)
        if _key(prompt) in cfg.fail_keys:
            return self._error(500, "this problem always fails")
        with self._lock:
            fault = cfg.faults.pop(0) if cfg.faults else None
        if fault == "429":
            return self._error(429, "rate limited", {"retry-after": "0"})
        if fault == "500":
            return self._error(500, "internal error")
        if fault in ("echo_key", "echo_key_500"):
            return self._error(401 if fault == "echo_key" else 500,
                               f"Incorrect API key provided: {self.auth[-1][1]}")
        n = int(body.get("n") or 1) if cfg.honor_n else 1
        limit = int(body.get("max_tokens") or 10**6)
        want_logprobs = bool(body.get("logprobs")) and cfg.logprobs
        outs = [self._response(prompt, limit) for _ in range(n)]
        record = Served(fault, sum(len(t) for t, _ in outs))
        self.served.append(record)
        if fault == "empty":
            outs = [([], 0.5) for _ in outs]
        if not body.get("stream"):
            await asyncio.sleep(cfg.first_token_latency + cfg.token_latency * max(len(t) for t, _ in outs))
            record.sent = record.usage = sum(len(t) for t, _ in outs)
            record.finished = True
            choices = [self._choice(i, "".join(t), [math.log(q)] * len(t), t, limit, chat, want_logprobs,
                                    stream=False) for i, (t, q) in enumerate(outs)]
            if fault == "bad_index":
                choices[0]["index"] = "x"
            return {"id": "x", "object": "chat.completion" if chat else "text_completion", "model": body["model"],
                    "choices": choices, "usage": self._usage(fault, record.usage, prompt)}
        return StreamingResponse(self._stream(body, outs, record, fault, chat, want_logprobs, limit, prompt),
                                 media_type="text/event-stream")

    def _choice(self, index, text, logprobs, tokens, limit, chat, want_logprobs, stream, finish=True):
        choice: dict[str, Any] = {"index": index}
        if chat:
            choice["delta" if stream else "message"] = {"role": "assistant", "content": text}
            if want_logprobs:
                choice["logprobs"] = {"content": [{"token": t, "logprob": lp, "top_logprobs": []}
                                                  for t, lp in zip(tokens, logprobs)]}
        else:
            choice["text"] = text
            if want_logprobs:
                choice["logprobs"] = {"tokens": tokens, "token_logprobs": logprobs, "top_logprobs": None,
                                      "text_offset": []}
        if finish:
            choice["finish_reason"] = "length" if len(tokens) >= limit else "stop"
        else:
            choice["finish_reason"] = None
        return choice

    @staticmethod
    def _usage(fault: str | None, tokens: int, prompt: str) -> dict[str, Any]:
        """The usage report, true or (by fault) impossible."""
        reported = {"negative_usage": -5, "huge_usage": 10**30, "float_usage": tokens + 0.5}.get(fault or "", tokens)
        return {"prompt_tokens": len(prompt.split()), "completion_tokens": reported,
                "total_tokens": len(prompt.split()) + (tokens if fault else reported)}

    async def _stream(self, body, outs, record: Served, fault, chat, want_logprobs, limit, prompt):
        cfg = self.config
        kind = "chat.completion.chunk" if chat else "text_completion"

        def chunk(choices, usage=None) -> str:
            return "data: " + json.dumps({"id": "x", "object": kind, "model": body["model"], "choices": choices,
                                          "usage": usage}) + "\n\n"

        try:
            if fault == "hang_start":
                await asyncio.sleep(3600)
            await asyncio.sleep(cfg.first_token_latency)
            longest = max((len(t) for t, _ in outs), default=0)
            cut = max(1, longest // 2)
            for step in range(longest):
                if fault == "bad_index" and step == cut:
                    yield chunk([{"index": "x", "delta": {"content": " oops"}, "text": " oops"}])
                    return
                if fault in ("drop", "truncate", "malformed", "hang") and step == cut:
                    if fault == "drop":
                        raise ConnectionResetError("fake server drops the connection")
                    if fault == "truncate":
                        return
                    if fault == "malformed":
                        yield "data: {\"choices\": [\n\n"
                        return
                    await asyncio.sleep(3600)
                if cfg.token_latency:
                    await asyncio.sleep(cfg.token_latency)
                choices = []
                for i, (tokens, q) in enumerate(outs):
                    if step < len(tokens):
                        choices.append(self._choice(i, tokens[step], [math.log(q)], [tokens[step]], limit, chat,
                                                    want_logprobs, stream=True, finish=False))
                        record.sent += 1
                yield chunk(choices)
            if cfg.end_latency:
                await asyncio.sleep(cfg.end_latency)
            yield chunk([self._choice(i, "", [], t, limit, chat, False, stream=True) | (
                {"delta": {}} if chat else {"text": ""}) for i, (t, _) in enumerate(outs)])
            usage = sum(len(t) for t, _ in outs)
            record.usage = usage
            if (body.get("stream_options") or {}).get("include_usage") and cfg.usage_in_stream:
                yield chunk([], self._usage(fault, usage, prompt))
            yield "data: [DONE]\n\n"
            record.finished = True
        except (asyncio.CancelledError, GeneratorExit):
            record.disconnected = True
            with self._streams:
                self._streams.notify_all()
            raise

    def wait_disconnected(self, count: int = 1, timeout: float = 10.0) -> None:
        """Block until the server has noticed ``count`` clients leave mid-stream (a deadline, not a delay).

        A stream abandoned between two writes is closed when it is collected, hence the collections.
        """
        deadline = time.monotonic() + timeout
        with self._streams:
            while sum(r.disconnected for r in self.served) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"the server noticed fewer than {count} disconnections in {timeout:g} s")
                if not self._streams.wait(min(left, 0.2)):
                    gc.collect()

    def _judge(self, prompt: str, body: dict[str, Any]) -> JSONResponse | dict:
        self.judged += 1
        q = self.quality(prompt) or 0.5
        top = [{"token": "Yes", "logprob": math.log(q)}, {"token": "No", "logprob": math.log(1 - q)}]
        logprobs = {"content": [{"token": "Yes", "logprob": math.log(q), "top_logprobs": top}]} \
            if self.config.logprobs and body.get("logprobs") else None
        return {"id": "j", "object": "chat.completion", "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "Yes"}, "logprobs": logprobs,
                             "finish_reason": "length"}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11}}

    # -- lifecycle -----------------------------------------------------------------------
    def __enter__(self) -> FakeServer:
        import uvicorn

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self._server = uvicorn.Server(uvicorn.Config(self.app, log_level="critical", timeout_graceful_shutdown=1,
                                                     lifespan="off"))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("fake server did not start")
            time.sleep(0.01)
        self._sock = sock
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def sent_tokens(self) -> int:
        return sum(r.sent for r in self.served)


def main() -> None:
    """Serve in the foreground (benchmarks run the server in its own process): prints the base URL."""
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--token-latency", type=float, default=0.0)
    parser.add_argument("--min-tokens", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    config = FakeConfig(token_latency=args.token_latency, min_tokens=args.min_tokens, max_tokens=args.max_tokens,
                        seed=args.seed)
    with FakeServer(config) as server:
        print(server.base_url, flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main()
