"""The OpenAI protocol (vLLM, SGLang, llama.cpp, Ollama, hosted APIs): requests, SSE, choices, usage.

It speaks the two generation endpoints (``/chat/completions`` and ``/completions``), streamed
or not, over an :class:`~optscale.live.transport.HttpTransport`, and owns what a long live
run needs from the protocol:

* token counts come from the server: ``usage`` when it sends a plausible one, otherwise the
  tokens it streamed (one logprob entry, or one content chunk, per token) - never a
  tokenizer guess. A usage report that cannot be true (negative, not an integer, more than
  the request allows or than were streamed) is refused, logged and flagged on the completion;
* a :class:`~optscale.live.types.TokenMeter` is updated while a response streams, so a
  caller that cancels the request still knows how many tokens the server had already
  produced for it;
* a malformed response (bad JSON, a choice with a non-integer index, fields of the wrong
  type) is a transient failure like a dropped connection: retried, then reported as
  :class:`~optscale.live.types.RequestFailed`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from ..errors import InputError
from .transport import Endpoint, HttpTransport, Transient, read_body, read_lines
from .types import (
    ClientSettings,
    Completion,
    EndpointKind,
    GenerationSettings,
    Prompt,
    RequestFailed,
    RequestRejected,
    TokenMeter,
)

__all__ = ["OpenAIGenerator", "ProtocolStats"]

log = logging.getLogger(__name__)

USAGE_MARGIN = 16
"""Tokens a usage report may exceed an exact streamed count by (special and end tokens)."""

MAX_PROMPT_TOKENS = 10**8
"""A reported prompt size above this is not believed."""

MODELS_BODY_LIMIT = 16 * 1024 * 1024
"""Bytes of a ``/models`` listing read at most."""

BYTES_PER_TOKEN = 8192
"""Response size allowed per requested token (a streamed chunk with 20 top logprobs is ~2 KB)."""


@dataclass
class ProtocolStats:
    """Responses the protocol had to distrust."""

    usage_invalid: int = 0
    malformed: int = 0


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
        values = [float(v) for v in values if _number(v) and math.isfinite(v)]
        if values:
            self.logprobs = (self.logprobs or []) + values
        if any(tops):
            self.top = (self.top or []) + tops
        return len(values)

    def text(self) -> str:
        content = "".join(self.content)
        reasoning = "".join(self.reasoning)
        return f"<think>{reasoning}</think>{content}" if reasoning else content


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _count(value: Any) -> bool:
    """A token count as the protocol defines it: a non-negative integer."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _top_map(top: Any) -> dict[str, float]:
    """Top logprobs as ``{token: logprob}`` from either the chat list or the completion dict form."""
    if isinstance(top, dict):
        return {str(k): float(v) for k, v in top.items() if _number(v)}
    if isinstance(top, list):
        return {str(e["token"]): float(e["logprob"]) for e in top
                if isinstance(e, dict) and "token" in e and _number(e.get("logprob"))}
    return {}


class OpenAIGenerator:
    """Generates completions from one model behind one or more OpenAI-compatible endpoints.

    ``client.api_key`` is sent to these endpoints only; nothing is read from the environment
    (the application decides which variable holds which server's key). ``names`` prefixes
    setting names in errors (``"scorer."`` for a judge or PRM server).
    """

    def __init__(
        self,
        base_urls: Sequence[str] | str,
        model: str,
        settings: GenerationSettings | None = None,
        *,
        kind: EndpointKind = "chat",
        client: ClientSettings | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        names: str = "",
    ):
        if kind not in ("chat", "completion"):
            raise InputError(f"endpoint kind must be chat or completion, got {kind!r}", names + "endpoint")
        if not model:
            raise InputError("give the model name the server serves", names + "model")
        self.model = model
        self.kind: EndpointKind = kind
        self.settings = settings or GenerationSettings()
        self.client_settings = client or ClientSettings()
        self.transport = HttpTransport(base_urls, self.client_settings, names=names, transport=transport)
        self.pool = self.transport.pool
        self.stats = ProtocolStats()

    async def aclose(self) -> None:
        await self.transport.aclose()

    async def __aenter__(self) -> OpenAIGenerator:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- checks before a run -------------------------------------------------------------
    async def check(self, need_logprobs: bool = False, why: str = "scorer") -> None:
        """Fail fast, naming the setting to fix, on an unreachable server, a wrong model or missing logprobs.

        ``why`` names what needs the logprobs (the place of that error).
        """
        await self.check_servers()
        probe = GenerationSettings(temperature=0.0, max_tokens=2, logprobs=need_logprobs, stream=self.settings.stream)
        messages = ({"role": "user", "content": "Say OK."},)
        try:
            [completion, *_] = await self.generate(Prompt(messages=messages, text="Say OK."), settings=probe)
        except RequestRejected as exc:
            raise InputError(exc.detail, exc.where) from None
        except RequestFailed as exc:
            raise InputError(f"test request failed: {exc}", self.transport.where("base_url")) from None
        if need_logprobs and completion.logprobs is None and (completion.tokens > 0 or completion.text):
            raise InputError(
                "the server returned no token logprobs, which this scorer needs (llama-cpp-python: start it with "
                "--logits_all true; hosted APIs: check that the model supports logprobs)", why)

    async def check_servers(self) -> None:
        """Every endpoint answers and lists the model (servers without ``/models`` are let through)."""
        t = self.transport
        for endpoint in self.pool.endpoints:
            try:
                async with t.http.stream("GET", f"{endpoint.url}/models") as response:
                    raw = await read_body(response, MODELS_BODY_LIMIT, truncate=True)
            except httpx.HTTPError as exc:
                reason = t.redact(f"{type(exc).__name__}: {exc or 'no answer'}")
                raise InputError(f"cannot reach {endpoint.label} ({reason})", t.where("base_url")) from None
            if response.status_code in (401, 403):
                raise InputError(f"{endpoint.label} refused the API key: {t.error_message(raw)}", t.where("api_key"))
            if response.status_code == 200:
                try:
                    served = [str(m.get("id")) for m in json.loads(raw).get("data", [])]
                except (ValueError, AttributeError, TypeError):
                    served = []
                if served and self.model not in served:
                    raise InputError(f"{endpoint.label} does not serve {self.model!r}; it serves "
                                     f"{t.redact(', '.join(served))[:500]}", t.where("model"))

    # -- generation ----------------------------------------------------------------------
    async def generate(
        self,
        prompt: Prompt,
        n: int = 1,
        meter: TokenMeter | None = None,
        settings: GenerationSettings | None = None,
    ) -> list[Completion]:
        """Up to ``n`` completions of one prompt (servers that ignore ``n`` return fewer).

        Retries transient failures; cancellation closes the stream at once, and ``meter``
        then holds the tokens produced so far.
        """
        settings = settings or self.settings
        meter = meter if meter is not None else TokenMeter()
        start = time.monotonic()

        async def attempt(endpoint: Endpoint) -> list[Completion]:
            return await self._attempt(endpoint, prompt, n, settings, meter)

        choices, endpoint, attempts = await self.transport.with_retries(attempt, meter)
        latency = time.monotonic() - start
        for c in choices:
            c.endpoint, c.attempts, c.latency_s = endpoint.label, attempts, latency
        choices[0].wasted_tokens = meter.wasted
        return choices

    async def post_json(self, path: str, body: dict[str, Any], root: bool = False) -> Any:
        """POST a JSON body to ``path`` under the base URL (or its server root), with retries."""
        return await self.transport.post_json(path, body, root=root)

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
                raise InputError("the chat endpoint needs messages; use a chat prompt template",
                                 self.transport.where("endpoint"))
            body["messages"] = list(prompt.messages)
            if s.logprobs or s.top_logprobs:
                # llama.cpp's server returns chat logprobs only when top_logprobs is set too
                body["logprobs"] = True
                body["top_logprobs"] = max(1, s.top_logprobs)
            return "/chat/completions", body
        if prompt.text is None:
            raise InputError("the completion endpoint needs a text prompt", self.transport.where("endpoint"))
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
        limit = 1024 * 1024 + BYTES_PER_TOKEN * s.max_tokens * max(n, 1)
        async with self.transport.stream("POST", endpoint.url + path, json=body) as response:
            if response.status_code != 200:
                await self.transport.raise_status(response)
            if not s.stream:
                raw = await read_body(response, limit)
                try:
                    data = json.loads(raw)
                except ValueError:
                    raise self._malformed("malformed JSON in response") from None
                usage = self._take(data, choices, meter, n, streamed=False)
                if not choices:
                    raise self._malformed("response without choices")
            else:
                done = False
                # Read on to the end of the body after [DONE], so the connection can be reused.
                async for line in read_lines(response, limit):
                    if done or not line.startswith("data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == "[DONE]":
                        done = True
                        continue
                    try:
                        data = json.loads(payload)
                    except ValueError:
                        raise self._malformed("malformed JSON in stream") from None
                    usage = self._take(data, choices, meter, n, streamed=True) or usage
                if not choices or not (done or all(c.finish_reason for c in choices.values())):
                    raise Transient("stream ended before the answer was complete")
        return self._finish(choices, usage, n, s, streamed=s.stream, where=endpoint.label)

    def _malformed(self, reason: str) -> Transient:
        self.stats.malformed += 1
        return Transient(reason)

    def _take(self, data: Any, choices: dict[int, _Choice], meter: TokenMeter, n: int, streamed: bool) -> dict | None:
        """Fold one response (or stream chunk) into ``choices``; returns its usage if any.

        Anything not shaped as the protocol says is a transient failure, never a crash.
        """
        if not isinstance(data, dict):
            raise self._malformed("malformed response object")
        if data.get("error"):
            message = self.transport.error_message(json.dumps(data).encode())
            raise Transient(f"server error in response: {message}")
        raws = data.get("choices") or []
        if not isinstance(raws, list):
            raise self._malformed("malformed choices (not a list)")
        for raw in raws:
            if not isinstance(raw, dict):
                raise self._malformed("malformed choice")
            try:
                self._take_choice(raw, choices, meter, n, streamed)
            except (TypeError, ValueError, ArithmeticError, AttributeError, KeyError) as exc:
                raise self._malformed(f"malformed choice ({type(exc).__name__}: {str(exc)[:100]})") from None
        usage = data.get("usage")
        return usage if isinstance(usage, dict) else None

    def _take_choice(self, raw: dict, choices: dict[int, _Choice], meter: TokenMeter, n: int, streamed: bool) -> None:
        index = raw.get("index", 0)
        if index is None:
            index = 0
        if not _count(index) or index >= max(n, 1):
            raise ValueError(f"choice index {str(index)[:40]!r} is not one of 0..{max(n, 1) - 1}")
        choice = choices.setdefault(index, _Choice())
        part = raw.get("delta" if streamed else "message") if self.kind == "chat" else raw
        part = part if isinstance(part, dict) else {}
        text = part.get("content") if self.kind == "chat" else part.get("text")
        reasoning = part.get("reasoning_content") or part.get("reasoning")
        if text is not None and not isinstance(text, str):
            raise TypeError(f"content is a {type(text).__name__}, not text")
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
            choice.finish_reason = str(raw["finish_reason"])[:100]

    def _usage_problem(self, used: Any, ordered: list[_Choice], n: int, s: GenerationSettings,
                       streamed: bool) -> str | None:
        """Why the reported completion tokens cannot be true, or None when they are plausible."""
        if not _count(used):
            return f"completion_tokens {str(used)[:40]} is not a non-negative integer"
        slack = USAGE_MARGIN * len(ordered)
        limit = s.max_tokens * max(n, len(ordered)) + slack
        counted = sum(c.counted for c in ordered)
        if streamed and counted > 0 and not any(c.by_chunks for c in ordered):  # an exact count to compare with
            limit = min(limit, counted + slack)
        if used > limit:
            return f"completion_tokens {used} exceeds what the request allows or streamed ({limit})"
        return None

    def _finish(self, choices: dict[int, _Choice], usage: dict | None, n: int, s: GenerationSettings,
                streamed: bool, where: str) -> list[Completion]:
        ordered = [choices[i] for i in sorted(choices)]
        used = usage.get("completion_tokens") if usage else None
        prompt_tokens = usage.get("prompt_tokens") if usage else None
        counted = [c.counted for c in ordered]
        problems = [self._usage_problem(used, ordered, n, s, streamed)] if used is not None else []
        usable = used is not None and problems[0] is None
        if prompt_tokens is not None and not (_count(prompt_tokens) and prompt_tokens <= MAX_PROMPT_TOKENS):
            problems.append(f"prompt_tokens {str(prompt_tokens)[:40]} is not plausible")
            prompt_tokens = None
        problem = "; ".join(p for p in problems if p) or None
        if problem:
            self.stats.usage_invalid += 1
            log.warning("%s sent an invalid usage report (%s); using the counted tokens", where, problem)
        if usable and (len(ordered) == 1 or used == sum(counted)):
            tokens, source = ([used] if len(ordered) == 1 else counted), "usage"
        elif usable and not any(counted):
            # Several choices, one total and nothing per choice: split it; the sum stays exact.
            share, extra = divmod(used, len(ordered))
            tokens, source = [share + (i < extra) for i in range(len(ordered))], "usage_split"
        elif any(c.by_chunks for c in ordered):
            tokens, source = counted, "chunks"
        elif streamed or any(c.logprobs for c in ordered):
            tokens, source = counted, "logprobs"
        else:
            tokens, source = counted, "unknown"
        return [Completion(
            text=c.text(),
            tokens=int(t),
            tokens_source=source,
            finish_reason=c.finish_reason,
            prompt_tokens=prompt_tokens,
            logprobs=c.logprobs,
            top_logprobs=c.top,
            usage_invalid=problem,
        ) for c, t in zip(ordered, tokens, strict=True)]
