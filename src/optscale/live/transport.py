"""HTTP transport to one model's servers: endpoint pool, health, retries, timeouts, secrets.

Knows nothing of any protocol: callers hand it one *attempt* (a coroutine taking an
:class:`Endpoint`) and it runs that attempt until it succeeds, spreading attempts over the
endpoints and retrying transient failures with exponential backoff and full jitter
(honouring ``Retry-After``). An attempt signals a transient failure with :class:`Transient`;
timeouts, dropped connections and 408/409/425/429/5xx answers are transient too, while a
server refusing the request for good (bad request, wrong model, bad key) raises
:class:`~optscale.live.types.RequestRejected` at once, naming the setting to fix.

Credentials stay with their servers: the client sends only its own ``api_key`` (nothing is
read from the environment here), and URLs' userinfo (sent by httpx as Basic auth) and the
key are masked in every message, log line and label (:mod:`optscale.live.secrets`).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import email.utils
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
from pydantic import SecretStr

from ..errors import InputError
from .secrets import Redactor, redact_url, url_secrets
from .types import ClientSettings, RequestFailed, RequestRejected, TokenMeter, clean_key

__all__ = ["check_credentials", "check_url", "Transient", "Endpoint", "EndpointPool", "TransportStats", "HttpTransport",
           "read_body", "read_lines", "extra_headers"]

log = logging.getLogger(__name__)

#: Headers that every request of :meth:`HttpTransport.stream` made in this context carries (set with
#: :func:`extra_headers`; tasks started inside inherit them): e.g. an episode's session id for a router.
_EXTRA_HEADERS: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar("optscale_extra_headers", default={})


@contextlib.contextmanager
def extra_headers(headers: dict[str, str]):
    """Within the block (and the tasks it starts), every upstream request also sends ``headers``."""
    token = _EXTRA_HEADERS.set({**_EXTRA_HEADERS.get(), **headers})
    try:
        yield
    finally:
        _EXTRA_HEADERS.reset(token)

R = TypeVar("R")


class Transient(Exception):
    """One attempt failed in a way that a later attempt may not (the reason is already redacted).

    ``status`` is the server's HTTP status when it answered with one, ``retry_after`` the
    seconds its ``Retry-After`` asked for.
    """

    def __init__(self, reason: str, retry_after: float | None = None, status: int | None = None):
        self.reason = reason
        self.retry_after = retry_after
        self.status = status
        super().__init__(reason)


@dataclass
class Endpoint:
    """One server URL and its health as seen by this client.

    ``url`` is what requests go to (it may carry credentials); ``label`` is the same URL
    without them, the only form that is shown or stored.
    """

    url: str
    in_flight: int = 0
    failures: int = 0
    down_until: float = 0.0
    requests: int = 0
    errors: int = 0

    @property
    def label(self) -> str:
        return redact_url(self.url)

    def healthy(self, now: float) -> bool:
        return self.down_until <= now


def check_url(url: str, where: str) -> None:
    """An http(s) URL with a host, a valid port and nothing after its path (errors never show credentials)."""
    shown = repr(redact_url(url))
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError for a port outside 0-65535
    except ValueError as exc:
        if "port" in str(exc).lower():
            raise InputError(f"{shown} has an invalid port (use 1-65535)", where) from None
        raise InputError(f"{shown} is not an http(s) URL like http://host:8000/v1", where) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputError(f"{shown} is not an http(s) URL like http://host:8000/v1", where)
    if port == 0:
        raise InputError(f"{shown} has an invalid port (use 1-65535)", where)
    if parts.query or parts.fragment or url.rstrip().endswith(("?", "#")):
        raise InputError(f"{shown} has a query string or fragment; give the server's base URL alone, like "
                         "http://host:8000/v1", where)


def check_credentials(urls: Sequence[str], key: str | None, where: str) -> None:
    """Refuse a key together with URL credentials: httpx would send the URL's as Basic auth, dropping the key."""
    with_userinfo = [url for url in urls if "@" in url.partition("://")[2].partition("/")[0]]
    if key and with_userinfo:
        raise InputError(f"{redact_url(with_userinfo[0])} carries user:password credentials (sent as Basic auth) "
                         "and a bearer key is given too, but a request carries one Authorization: give one of "
                         "them", where)


class EndpointPool:
    """Spreads requests over several endpoints of one model and rests the failing ones.

    The least busy healthy endpoint gets the next request (ties rotate). After
    ``fail_threshold`` consecutive failures an endpoint rests for ``rest`` seconds, doubling
    with each further failure up to ``rest_max``; one success makes it healthy again. When
    every endpoint rests, the one back soonest is used anyway rather than stalling the run.
    """

    MAX_DOUBLINGS = 64
    """Doublings of the rest counted at most (more would overflow a float; ``rest_max`` caps it far sooner)."""

    def __init__(self, urls: Sequence[str], fail_threshold: int = 2, rest: float = 1.0, rest_max: float = 30.0,
                 where: str = "base_url"):
        if not urls:
            raise InputError("give at least one server URL", where)
        for url in urls:
            check_url(url, where)
        self.endpoints = [Endpoint(url.rstrip("/")) for url in urls]
        self.fail_threshold = fail_threshold
        self.rest = rest
        self.rest_max = rest_max
        self.rested = 0
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
                pause = min(self.rest_max, self.rest * 2.0 ** min(excess, self.MAX_DOUBLINGS))
                endpoint.down_until = time.monotonic() + pause
                self.rested += 1
                log.warning("%s failed %d times in a row; resting it for %.3g s", endpoint.label,
                            endpoint.failures, pause)


@dataclass
class TransportStats:
    """What happened on the wire, for logs and run summaries."""

    requests: int = 0
    attempts: int = 0
    retried: int = 0
    failed: int = 0
    rejected: int = 0


ERROR_BODY_LIMIT = 64 * 1024
"""Bytes of an error body read at most (the message shown is shorter still)."""
JSON_BODY_LIMIT = 64 * 1024 * 1024
"""Bytes of a JSON answer (``post_json``) read at most."""


async def read_body(response: httpx.Response, limit: int, truncate: bool = False) -> bytes:
    """The body of ``response``, at most ``limit`` bytes: longer is a transient failure (or cut, with ``truncate``)."""
    chunks, size = [], 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            if truncate:
                chunks.append(chunk[: len(chunk) - (size - limit)])
                break
            raise Transient(f"response larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_lines(response: httpx.Response, limit: int):
    """The lines of a streamed body (``\n`` or ``\r\n``), refusing bodies over ``limit`` characters.

    httpx's own line reader keeps a line of any length in memory; a server that never sends a
    newline must not be able to fill it.
    """
    size, buffer = 0, ""
    async for text in response.aiter_text():
        size += len(text)
        if size > limit:
            raise Transient(f"response larger than {limit} characters")
        if "\n" not in text:
            buffer += text
            continue
        *lines, rest = (buffer + text).split("\n")
        buffer = rest
        for line in lines:
            yield line.removesuffix("\r")
    if buffer:
        yield buffer.removesuffix("\r")


def _retry_after(response: httpx.Response) -> float | None:
    """``Retry-After`` in seconds, given as seconds or as an HTTP date."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class HttpTransport:
    """One pooled HTTP client for the endpoints of one model, with retries.

    ``names`` prefixes the setting names in errors: empty for the generator's servers,
    ``"scorer."`` for a scorer's (so a bad judge key reads ``scorer.api_key``).
    """

    def __init__(self, base_urls: Sequence[str] | str, settings: ClientSettings | None = None, *,
                 names: str = "", transport: httpx.AsyncBaseTransport | None = None):
        self.settings = settings or ClientSettings()
        self.names = names
        urls = [base_urls] if isinstance(base_urls, str) else list(base_urls)
        self.pool = EndpointPool(urls, where=self.where("base_url"))
        key = self.settings.api_key
        key = key.get_secret_value() if isinstance(key, SecretStr) else key  # model_copy does not validate
        if key is not None:  # so a key that reaches here unvalidated (a scorer's, via model_copy) is checked too
            try:
                key = clean_key(key)
            except ValueError as exc:
                raise InputError(str(exc), self.where("api_key")) from None
        check_credentials(urls, key, self.where("api_key"))
        self.redact = Redactor([key, *(s for url in urls for s in url_secrets(url))])
        self.stats = TransportStats()
        cs = self.settings
        self.http = httpx.AsyncClient(
            timeout=httpx.Timeout(connect=cs.connect_timeout, read=cs.idle_timeout, write=cs.idle_timeout, pool=None),
            limits=httpx.Limits(max_connections=cs.max_connections, max_keepalive_connections=cs.max_connections),
            headers={"Authorization": f"Bearer {key}"} if key else {},
            transport=transport,
        )
        self._rng = random.Random()
        self.in_flight = 0  # requests of stream() on the wire now (not those waiting for a connection of the pool)

    @contextlib.asynccontextmanager
    async def stream(self, method: str, url: str, **kwargs: Any) -> AsyncIterator[httpx.Response]:
        """``http.stream(method, url, ...)``, counted in :attr:`in_flight` while it is really under way.

        A request is counted from when it starts sending its headers (so it holds a connection:
        httpcore's ``trace`` extension reports it) until its response is closed; a request still
        queued for one of the pool's ``max_connections`` is not. A transport that reports no
        trace (a test's mock) is counted from its response's arrival.
        """
        sent = False

        def on_wire() -> None:
            nonlocal sent
            if not sent:
                sent = True
                self.in_flight += 1

        async def trace(event: str, info: dict[str, Any]) -> None:
            if event.endswith(".send_request_headers.started"):
                on_wire()

        extra = _EXTRA_HEADERS.get()
        if extra:
            kwargs["headers"] = {**extra, **(kwargs.get("headers") or {})}
        try:
            async with self.http.stream(method, url, extensions={"trace": trace}, **kwargs) as response:
                on_wire()
                yield response
        finally:
            if sent:
                self.in_flight -= 1

    def where(self, key: str) -> str:
        """The library name of setting ``key`` of these servers."""
        return self.names + key

    async def aclose(self) -> None:
        await self.http.aclose()

    def error_message(self, body: bytes) -> str:
        """The message of an error body, short and with every known secret masked."""
        try:
            data = json.loads(body)
        except ValueError:
            return self.redact(body.decode("utf-8", "replace").strip()[:300]) or "(empty body)"
        err = data.get("error", data) if isinstance(data, dict) else data
        if isinstance(err, dict):
            err = err.get("message") or err.get("detail") or err
        return self.redact(str(err)[:300])

    async def raise_status(self, response: httpx.Response) -> None:
        """Raise for a non-200 answer: transient statuses are retried, others name the setting to fix."""
        status = response.status_code
        message = self.error_message(await read_body(response, ERROR_BODY_LIMIT, truncate=True))
        if status in (408, 409, 425, 429) or status >= 500:
            raise Transient(f"HTTP {status}: {message}", _retry_after(response), status)
        if status in (401, 403):
            where = self.where("api_key")
        elif "model" in message.lower():
            where = self.where("model")
        else:
            where = self.where("base_url")
        self.stats.rejected += 1
        raise RequestRejected(f"HTTP {status} from {redact_url(str(response.request.url))}: {message}", status,
                              where)

    async def with_retries(self, attempt: Callable[[Endpoint], Awaitable[R]],
                           meter: TokenMeter | None = None) -> tuple[R, Endpoint, int]:
        """Run ``attempt(endpoint)`` until it succeeds, retrying transient failures with backoff and jitter.

        A server's ``Retry-After`` is honoured: the next attempt waits at least that long, and
        when it asks for longer than ``backoff_max`` the request fails at once rather than
        retrying early (:class:`~optscale.live.types.RequestFailed` carries the server's status
        and ``retry_after``, so a proxy can pass the rate limit on). Returns the result, the
        endpoint that gave it and the number of attempts.
        """
        cs = self.settings
        self.stats.requests += 1
        last = "no attempt"
        status: int | None = None
        wait: float | None = None
        for number in range(1, cs.retries + 2):
            endpoint = self.pool.acquire()
            self.stats.attempts += 1
            ok: bool | None = None
            status = wait = None
            try:
                async with asyncio.timeout(cs.timeout):
                    result = await attempt(endpoint)
                ok = True
            except Transient as exc:
                ok, last, wait, status = False, exc.reason, exc.retry_after, exc.status
            except TimeoutError:
                ok, last = False, f"no complete answer within {cs.timeout:g} s"
            except httpx.TimeoutException:
                ok, last = False, f"no data for {cs.idle_timeout:g} s (timeout)"
            except httpx.RequestError as exc:  # connection, protocol and content-decoding failures
                ok, last = False, self.redact(f"{type(exc).__name__}: {exc or 'connection failed'}")
            except RequestRejected:
                ok = True  # the server is up; the request is wrong
                raise
            finally:
                self.pool.release(endpoint, ok)
            if ok:
                return result, endpoint, number
            if meter is not None:
                meter.attempt_failed()
            if wait is not None and wait > cs.backoff_max:
                last += f" (the server asks to retry after {wait:.3g} s, longer than backoff_max {cs.backoff_max:g} s)"
                break
            if number <= cs.retries:
                self.stats.retried += 1
                delay = self._rng.uniform(0, min(cs.backoff_max, cs.backoff * 2 ** (number - 1)))
                delay = max(delay, wait or 0.0)
                log.info("attempt %d at %s failed (%s); retrying in %.3g s", number, endpoint.label, last, delay)
                await asyncio.sleep(delay)
        self.stats.failed += 1
        log.warning("request failed after %d attempts; last: %s", number, last)
        raise RequestFailed(f"{number} attempts failed; last: {last}", number, status, wait)

    async def post_json(self, path: str, body: dict[str, Any], root: bool = False) -> Any:
        """POST a JSON body to ``path`` under the base URL (or its server root), with retries."""

        async def attempt(endpoint: Endpoint) -> Any:
            base = endpoint.url.removesuffix("/v1") if root else endpoint.url
            async with self.stream("POST", base + path, json=body) as response:
                if response.status_code != 200:
                    await self.raise_status(response)
                raw = await read_body(response, JSON_BODY_LIMIT)
            try:
                return json.loads(raw)
            except ValueError:
                raise Transient("malformed JSON in response") from None

        return (await self.with_retries(attempt))[0]
