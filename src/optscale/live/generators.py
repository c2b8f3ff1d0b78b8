"""Async client for OpenAI-compatible inference servers (vLLM, SGLang, llama.cpp, Ollama, hosted APIs).

It speaks the two generation endpoints (``/chat/completions`` and ``/completions``) over
``httpx``, streamed or not, and owns everything a long live run needs from a client:

* token counts come from the server: ``usage`` when it sends it, otherwise the tokens it
  streamed (one logprob entry, or one content chunk, per token) - never a tokenizer guess;
* a :class:`TokenMeter` is updated while a response streams, so a caller that cancels the
  request still knows how many tokens the server had already produced for it;
* 429, 5xx, dropped connections, truncated streams, malformed JSON and hangs are retried with
  exponential backoff and full jitter (honouring ``Retry-After``), while requests the server
  rejects for good (bad request, wrong model, bad key) fail at once with a message naming
  the flag to fix;
* several endpoints serving one model share the load: least in-flight first, and an endpoint
  that keeps failing is rested for a growing while.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import httpx

from ..errors import InputError, OptscaleError

__all__ = [
    "GenerationSettings",
    "ClientSettings",
    "Prompt",
    "Completion",
    "TokenMeter",
    "Endpoint",
    "EndpointPool",
    "OpenAIGenerator",
    "GenerationError",
    "RequestRejected",
    "RequestFailed",
]

EndpointKind = Literal["chat", "completion"]


class GenerationError(OptscaleError):
    """A request that produced no usable completion."""


class RequestRejected(GenerationError):
    """The server refused the request itself (4xx other than 408/409/425/429): retrying cannot help."""

    def __init__(self, message: str, status: int, where: str):
        self.status = status
        self.where = where
        super().__init__(f"{where}: {message}")


class RequestFailed(GenerationError):
    """Every attempt of a request failed with a transient error (after all retries)."""

    def __init__(self, message: str, attempts: int):
        self.attempts = attempts
        super().__init__(message)


class _Transient(Exception):
    """One attempt failed in a way that a later attempt may not."""

    def __init__(self, reason: str, retry_after: float | None = None):
        self.reason = reason
        self.retry_after = retry_after
        super().__init__(reason)


@dataclass(frozen=True)
class GenerationSettings:
    """Sampling parameters sent with every request."""

    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 1024
    stop: tuple[str, ...] = ()
    logprobs: bool = False
    top_logprobs: int = 0
    stream: bool = True
    seed: int | None = None


@dataclass(frozen=True)
class ClientSettings:
    """Transport behaviour: timeouts, retries and the usage report request.

    ``timeout`` bounds one whole attempt; ``idle_timeout`` bounds the silence between two
    received bytes, which is what catches a hung stream long before ``timeout``.
    """

    timeout: float = 600.0
    idle_timeout: float = 60.0
    connect_timeout: float = 10.0
    retries: int = 5
    backoff: float = 0.5
    backoff_max: float = 20.0
    stream_usage: bool = True
    api_key: str | None = None
    max_connections: int = 64


@dataclass(frozen=True)
class Prompt:
    """What one request asks: chat messages, or raw text for the completion endpoint."""

    messages: tuple[dict[str, str], ...] | None = None
    text: str | None = None


@dataclass
class TokenMeter:
    """Tokens the server produced for one logical request, readable even after cancellation.

    ``streamed`` counts the current attempt; ``wasted`` those of earlier attempts that
    failed mid-way (their tokens were generated and are paid for, but gave no sample).
    ``by_chunks`` is set once a token was counted from a content chunk rather than a logprob
    entry (servers may merge tokens into one chunk, so such counts can fall short).
    """

    streamed: int = 0
    wasted: int = 0
    by_chunks: bool = False

    @property
    def total(self) -> int:
        return self.streamed + self.wasted

    def attempt_failed(self) -> None:
        self.wasted += self.streamed
        self.streamed = 0


@dataclass
class Completion:
    """One generated choice and what it cost.

    ``tokens_source`` says where ``tokens`` came from: ``usage`` (the server's report),
    ``usage_split`` (one reported total for several choices, split evenly), ``logprobs`` (one
    per streamed logprob entry: exact) or ``chunks`` (one per streamed content chunk, when the
    server sent neither usage nor logprobs: a lower bound if it merged tokens).
    """

    text: str
    tokens: int
    tokens_source: str
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    logprobs: list[float] | None = None
    top_logprobs: list[dict[str, float]] | None = None
    endpoint: str = ""
    attempts: int = 1
    wasted_tokens: int = 0
    latency_s: float = 0.0


@dataclass
class Endpoint:
    """One server URL and its health as seen by this client."""

    url: str
    in_flight: int = 0
    failures: int = 0
    down_until: float = 0.0
    requests: int = 0
    errors: int = 0

    def healthy(self, now: float) -> bool:
        return self.down_until <= now


class EndpointPool:
    """Spreads requests over several endpoints of one model and rests the failing ones.

    The least busy healthy endpoint gets the next request (ties rotate). After
    ``fail_threshold`` consecutive failures an endpoint rests for ``rest`` seconds, doubling
    with each further failure up to ``rest_max``; one success makes it healthy again. When
    every endpoint rests, the one back soonest is used anyway rather than stalling the run.
    """

    def __init__(self, urls: Sequence[str], fail_threshold: int = 2, rest: float = 1.0, rest_max: float = 30.0):
        if not urls:
            raise InputError("give at least one server URL", "--base-url")
        self.endpoints = [Endpoint(url.rstrip("/")) for url in urls]
        self.fail_threshold = fail_threshold
        self.rest = rest
        self.rest_max = rest_max
        self._turn = 0

    def acquire(self) -> Endpoint:
        now = time.monotonic()
        healthy = [e for e in self.endpoints if e.healthy(now)]
        if healthy:
            least = min(e.in_flight for e in healthy)
            candidates = [e for e in healthy if e.in_flight == least]
            self._turn += 1
            chosen = candidates[self._turn % len(candidates)]
        else:
            chosen = min(self.endpoints, key=lambda e: e.down_until)
        chosen.in_flight += 1
        chosen.requests += 1
        return chosen

    def release(self, endpoint: Endpoint, ok: bool | None) -> None:
        """``ok`` None means the request was cancelled: it says nothing about the server."""
        endpoint.in_flight -= 1
        if ok:
            endpoint.failures = 0
            endpoint.down_until = 0.0
        elif ok is False:
            endpoint.errors += 1
            endpoint.failures += 1
            excess = endpoint.failures - self.fail_threshold
            if excess >= 0:
                endpoint.down_until = time.monotonic() + min(self.rest_max, self.rest * 2**excess)


class _Choice:
    """Accumulates one choice of a (possibly streamed) response."""

    def __init__(self) -> None:
        self.content: list[str] = []
        self.reasoning: list[str] = []
        self.counted = 0
        self.by_chunks = False
        self.logprobs: list[float] | None = None
        self.top: list[dict[str, float]] | None = None
        self.finish_reason: str | None = None

    def add_logprobs(self, block: Any, kind: EndpointKind) -> int:
        """Append token logprobs of a chat or completion ``logprobs`` block; returns tokens seen."""
        if not isinstance(block, dict):
            return 0
        if kind == "chat":
            entries = block.get("content") or []
            values = [e.get("logprob") for e in entries if isinstance(e, dict)]
            tops = [_top_map(e.get("top_logprobs")) for e in entries if isinstance(e, dict)]
        else:
            values = list(block.get("token_logprobs") or [])
            tops = [_top_map(t) for t in (block.get("top_logprobs") or [])]
        values = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
        if values:
            self.logprobs = (self.logprobs or []) + values
        if any(tops):
            self.top = (self.top or []) + tops
        return len(values)

    def text(self) -> str:
        content = "".join(self.content)
        reasoning = "".join(self.reasoning)
        return f"<think>{reasoning}</think>{content}" if reasoning else content


def _top_map(top: Any) -> dict[str, float]:
    """Top logprobs as ``{token: logprob}`` from either the chat list or the completion dict form."""
    if isinstance(top, dict):
        return {str(k): float(v) for k, v in top.items() if isinstance(v, (int, float))}
    if isinstance(top, list):
        return {str(e["token"]): float(e["logprob"]) for e in top
                if isinstance(e, dict) and "token" in e and isinstance(e.get("logprob"), (int, float))}
    return {}


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _error_message(body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace").strip()[:300] or "(empty body)"
    err = data.get("error", data) if isinstance(data, dict) else data
    if isinstance(err, dict):
        return str(err.get("message") or err.get("detail") or err)[:300]
    return str(err)[:300]


class OpenAIGenerator:
    """Generates completions from one model behind one or more OpenAI-compatible endpoints."""

    def __init__(
        self,
        base_urls: Sequence[str] | str,
        model: str,
        settings: GenerationSettings | None = None,
        *,
        kind: EndpointKind = "chat",
        client: ClientSettings | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        if kind not in ("chat", "completion"):
            raise InputError(f"endpoint kind must be chat or completion, got {kind!r}", "--endpoint")
        if not model:
            raise InputError("give the model name the server serves", "--model")
        self.model = model
        self.kind: EndpointKind = kind
        self.settings = settings or GenerationSettings()
        self.client_settings = client or ClientSettings()
        self.pool = EndpointPool([base_urls] if isinstance(base_urls, str) else list(base_urls))
        cs = self.client_settings
        key = cs.api_key or os.environ.get("OPENAI_API_KEY")
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(connect=cs.connect_timeout, read=cs.idle_timeout, write=cs.idle_timeout, pool=None),
            limits=httpx.Limits(max_connections=cs.max_connections, max_keepalive_connections=cs.max_connections),
            headers={"Authorization": f"Bearer {key}"} if key else {},
            transport=transport,
        )
        self._rng = random.Random()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> OpenAIGenerator:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- checks before a run -------------------------------------------------------------
    async def check(self, need_logprobs: bool = False, why: str = "--scorer") -> None:
        """Fail fast, with the flag to fix, on an unreachable server, a wrong model or missing logprobs."""
        await self.check_servers()
        probe = GenerationSettings(temperature=0.0, max_tokens=2, logprobs=need_logprobs, stream=self.settings.stream)
        messages = ({"role": "user", "content": "Say OK."},)
        try:
            [completion, *_] = await self.generate(Prompt(messages=messages, text="Say OK."), settings=probe)
        except RequestRejected as exc:
            raise InputError(str(exc).split(": ", 1)[-1], exc.where) from None
        except RequestFailed as exc:
            raise InputError(f"test request failed: {exc}", "--base-url") from None
        if need_logprobs and completion.logprobs is None and completion.tokens > 0:
            raise InputError(
                f"the server returned no token logprobs, which {why} needs (llama-cpp-python: start it with "
                "--logits_all true; hosted APIs: check that the model supports logprobs)", why)

    async def check_servers(self) -> None:
        """Every endpoint answers and lists the model (servers without ``/models`` are let through)."""
        for endpoint in self.pool.endpoints:
            try:
                response = await self._http.get(f"{endpoint.url}/models")
            except httpx.HTTPError as exc:
                raise InputError(f"cannot reach {endpoint.url} ({type(exc).__name__}: {exc or 'no answer'})",
                                 "--base-url") from None
            if response.status_code in (401, 403):
                raise InputError(f"{endpoint.url} refused the API key: {_error_message(response.content)}",
                                 "--api-key")
            if response.status_code == 200:
                try:
                    served = [str(m.get("id")) for m in response.json().get("data", [])]
                except (ValueError, AttributeError):
                    served = []
                if served and self.model not in served:
                    raise InputError(f"{endpoint.url} does not serve {self.model!r}; it serves {', '.join(served)}",
                                     "--model")

    # -- generation ----------------------------------------------------------------------
    async def generate(
        self,
        prompt: Prompt,
        n: int = 1,
        meter: TokenMeter | None = None,
        settings: GenerationSettings | None = None,
    ) -> list[Completion]:
        """Up to ``n`` completions of one prompt (servers that ignore ``n`` return one).

        Retries transient failures; cancellation closes the stream at once, and ``meter``
        then holds the tokens produced so far.
        """
        settings = settings or self.settings
        meter = meter if meter is not None else TokenMeter()
        start = time.monotonic()

        async def attempt(endpoint: Endpoint) -> list[Completion]:
            return await self._attempt(endpoint, prompt, n, settings, meter)

        choices, endpoint, attempts = await self.with_retries(attempt, meter)
        latency = time.monotonic() - start
        for c in choices:
            c.endpoint, c.attempts, c.latency_s = endpoint.url, attempts, latency
        choices[0].wasted_tokens = meter.wasted
        return choices

    async def post_json(self, path: str, body: dict[str, Any], root: bool = False) -> Any:
        """POST a JSON body to ``path`` under the base URL (or its server root), with retries."""

        async def attempt(endpoint: Endpoint) -> Any:
            base = endpoint.url.removesuffix("/v1") if root else endpoint.url
            response = await self._http.post(base + path, json=body)
            if response.status_code != 200:
                await self._raise_status(response)
            try:
                return response.json()
            except ValueError:
                raise _Transient("malformed JSON in response") from None

        return (await self.with_retries(attempt))[0]

    async def with_retries(self, attempt, meter: TokenMeter | None = None) -> tuple[Any, Endpoint, int]:
        """Run ``attempt(endpoint)`` until it succeeds, retrying transient failures with backoff and jitter."""
        cs = self.client_settings
        last = "no attempt"
        for number in range(1, cs.retries + 2):
            endpoint = self.pool.acquire()
            ok: bool | None = None
            wait: float | None = None
            try:
                async with asyncio.timeout(cs.timeout):
                    result = await attempt(endpoint)
                ok = True
            except _Transient as exc:
                ok, last, wait = False, exc.reason, exc.retry_after
            except TimeoutError:
                ok, last = False, f"no complete answer within {cs.timeout:g} s"
            except httpx.TimeoutException:
                ok, last = False, f"no data for {cs.idle_timeout:g} s (timeout)"
            except httpx.TransportError as exc:
                ok, last = False, f"{type(exc).__name__}: {exc or 'connection failed'}"
            except RequestRejected:
                ok = True  # the server is up; the request is wrong
                raise
            finally:
                self.pool.release(endpoint, ok)
            if ok:
                return result, endpoint, number
            if meter is not None:
                meter.attempt_failed()
            if number <= cs.retries:
                delay = self._rng.uniform(0, min(cs.backoff_max, cs.backoff * 2 ** (number - 1)))
                await asyncio.sleep(max(delay, min(wait or 0.0, cs.backoff_max)))
        raise RequestFailed(f"{cs.retries + 1} attempts failed; last: {last}", cs.retries + 1)

    def _body(self, prompt: Prompt, n: int, s: GenerationSettings) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": s.max_tokens,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "stream": s.stream,
        }
        if n != 1:
            body["n"] = n
        if s.stop:
            body["stop"] = list(s.stop)
        if s.seed is not None:
            body["seed"] = s.seed
        if s.stream and self.client_settings.stream_usage:
            body["stream_options"] = {"include_usage": True}
        if self.kind == "chat":
            if prompt.messages is None:
                raise InputError("the chat endpoint needs messages; use a chat prompt template", "--endpoint")
            body["messages"] = list(prompt.messages)
            if s.logprobs or s.top_logprobs:
                # llama.cpp's server returns chat logprobs only when top_logprobs is set too
                body["logprobs"] = True
                body["top_logprobs"] = max(1, s.top_logprobs)
            return "/chat/completions", body
        if prompt.text is None:
            raise InputError("the completion endpoint needs a text prompt", "--endpoint")
        body["prompt"] = prompt.text
        if s.logprobs or s.top_logprobs:
            body["logprobs"] = max(1, s.top_logprobs)
        return "/completions", body

    async def _attempt(
        self, endpoint: Endpoint, prompt: Prompt, n: int, s: GenerationSettings, meter: TokenMeter
    ) -> list[Completion]:
        path, body = self._body(prompt, n, s)
        choices: dict[int, _Choice] = {}
        usage: dict[str, Any] | None = None
        async with self._http.stream("POST", endpoint.url + path, json=body) as response:
            if response.status_code != 200:
                await self._raise_status(response)
            if not s.stream:
                raw = await response.aread()
                try:
                    data = json.loads(raw)
                except ValueError:
                    raise _Transient("malformed JSON in response") from None
                usage = self._take(data, choices, meter, streamed=False)
                if not choices:
                    raise _Transient("response without choices")
            else:
                done = False
                # Read on to the end of the body after [DONE], so the connection can be reused.
                async for line in response.aiter_lines():
                    if done or not line.startswith("data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == "[DONE]":
                        done = True
                        continue
                    try:
                        data = json.loads(payload)
                    except ValueError:
                        raise _Transient("malformed JSON in stream") from None
                    usage = self._take(data, choices, meter, streamed=True) or usage
                if not choices or not (done or all(c.finish_reason for c in choices.values())):
                    raise _Transient("stream ended before the answer was complete")
        return self._finish(choices, usage)

    async def _raise_status(self, response: httpx.Response) -> None:
        status = response.status_code
        message = _error_message(await response.aread())
        if status in (408, 409, 425, 429) or status >= 500:
            raise _Transient(f"HTTP {status}: {message}", _retry_after(response))
        if status in (401, 403):
            where = "--api-key"
        elif "model" in message.lower():
            where = "--model"
        else:
            where = "--base-url"
        raise RequestRejected(f"HTTP {status} from {response.request.url}: {message}", status, where)

    def _take(self, data: Any, choices: dict[int, _Choice], meter: TokenMeter, streamed: bool) -> dict | None:
        """Fold one response (or stream chunk) into ``choices``; returns its usage if any."""
        if not isinstance(data, dict):
            raise _Transient("malformed response object")
        if data.get("error"):
            raise _Transient(f"server error in response: {_error_message(json.dumps(data).encode())}")
        for raw in data.get("choices") or []:
            if not isinstance(raw, dict):
                raise _Transient("malformed choice")
            choice = choices.setdefault(int(raw.get("index") or 0), _Choice())
            part = raw.get("delta" if streamed else "message") if self.kind == "chat" else raw
            part = part if isinstance(part, dict) else {}
            text = part.get("content") if self.kind == "chat" else part.get("text")
            reasoning = part.get("reasoning_content") or part.get("reasoning")
            if isinstance(text, str) and text:
                choice.content.append(text)
            if isinstance(reasoning, str) and reasoning:
                choice.reasoning.append(reasoning)
            seen = choice.add_logprobs(raw.get("logprobs"), self.kind)
            if streamed:
                tokens = seen or (1 if (text or reasoning) else 0)
                if tokens and not seen:
                    choice.by_chunks = meter.by_chunks = True
                choice.counted += tokens
                meter.streamed += tokens
            else:
                choice.counted += seen
            if raw.get("finish_reason"):
                choice.finish_reason = str(raw["finish_reason"])
        usage = data.get("usage")
        return usage if isinstance(usage, dict) else None

    @staticmethod
    def _finish(choices: dict[int, _Choice], usage: dict | None) -> list[Completion]:
        ordered = [choices[i] for i in sorted(choices)]
        used = usage.get("completion_tokens") if usage else None
        prompt_tokens = usage.get("prompt_tokens") if usage else None
        counted = [c.counted for c in ordered]
        if isinstance(used, int) and (len(ordered) == 1 or used == sum(counted)):
            tokens, source = ([used] if len(ordered) == 1 else counted), "usage"
        elif isinstance(used, int) and not any(counted):
            # Several choices, one total and nothing per choice: split it; the sum stays exact.
            share, extra = divmod(used, len(ordered))
            tokens, source = [share + (i < extra) for i in range(len(ordered))], "usage_split"
        else:
            tokens, source = counted, "chunks" if any(c.by_chunks for c in ordered) else "logprobs"
        out = []
        for c, t in zip(ordered, tokens):
            out.append(Completion(
                text=c.text(),
                tokens=int(t),
                tokens_source=source,
                finish_reason=c.finish_reason,
                prompt_tokens=prompt_tokens if isinstance(prompt_tokens, int) else None,
                logprobs=c.logprobs,
                top_logprobs=c.top,
            ))
        return out
