"""Request bodies, read bounded by time and bytes: a burst of fast clients is served, a slow one times out.

Each body must arrive within ``body_timeout_s`` (408, and the connection is closed: a slow client
holds no slot after its timeout) and be at most ``max_body_bytes`` (413). Memory is bounded by
bytes, not by refusing clients: the bodies of the requests under way (being read, or held while
their episode samples) hold at most ``max_body_buffer_bytes`` together, counted as the bytes
arrive; a body that would pass it gets 429 with ``Retry-After``. ``max_body_reads`` bounds the
bodies being read at once (429 beyond). A body must be UTF-8 JSON whose strings are valid
Unicode: a lone surrogate (``"\\ud800"``) is refused with 400 naming the field, since no upstream
could be sent it.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import Request
from starlette.requests import ClientDisconnect

from .errors import ApiError
from .settings import ServeConfig

__all__ = ["BodyReader", "CLOSE"]

#: The header of an answer after which the server closes the connection (the body was not read in full).
CLOSE = {"Connection": "close"}


class BodyReader:
    """Reads JSON bodies within the server's limits; :meth:`release` gives a finished request's bytes back."""

    def __init__(self, config: ServeConfig):
        self.timeout_s, self.max_bytes = config.body_timeout_s, config.max_body_bytes
        self.max_reads, self.budget = config.max_body_reads, config.max_body_buffer_bytes
        self.retry_after = str(config.retry_after_s)
        self.active = 0  # bodies being read
        self.held = 0  # bytes of the bodies of requests under way

    async def read_json(self, request: Request) -> tuple[bytes, Any]:
        """The raw body and its JSON value; raises the located 4xx answer of a body that is not acceptable."""
        ctype = request.headers.get("content-type", "")
        if ctype.split(";")[0].strip().lower() != "application/json":
            raise ApiError(415, f"send the body as JSON with Content-Type: application/json (got {ctype[:80]!r})",
                           "Content-Type", "unsupported_media_type")
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_bytes:
            raise self._too_large()
        if self.active >= self.max_reads:
            raise ApiError(429, f"the server is reading {self.max_reads} request bodies (max_body_reads); retry "
                           "shortly", None, "too_many_uploads", {"Retry-After": self.retry_after, **CLOSE})
        self.active += 1
        try:
            raw = await asyncio.wait_for(self._read(request), self.timeout_s)
        except (asyncio.TimeoutError, TimeoutError):
            raise ApiError(408, f"the body did not arrive within {self.timeout_s:g} s (body_timeout_s)", None,
                           "body_timeout", dict(CLOSE)) from None
        except ClientDisconnect:
            raise ApiError(499, "the client closed the connection while sending the body", None,
                           "client_closed_request", dict(CLOSE)) from None
        finally:
            self.active -= 1
        try:
            value = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise ApiError(400, f"the body is not UTF-8 (byte {exc.start})", None, "invalid_json") from None
        except json.JSONDecodeError as exc:
            raise ApiError(400, f"the body is not valid JSON: {exc.msg} (line {exc.lineno} column {exc.colno})",
                           None, "invalid_json") from None
        except (ValueError, RecursionError) as exc:
            raise ApiError(400, f"the body is not valid JSON: {str(exc)[:200]}", None, "invalid_json") from None
        _refuse_surrogates(value)
        return raw, value

    async def _read(self, request: Request) -> bytes:
        state = request.scope["state"]
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_bytes:
                raise self._too_large()
            if self.held + len(chunk) > self.budget:
                raise ApiError(429, f"the server holds {self.budget} bytes of request bodies "
                               "(max_body_buffer_bytes); retry shortly", None, "too_many_uploads",
                               {"Retry-After": self.retry_after, **CLOSE})
            self.held += len(chunk)
            state["body_bytes"] = state.get("body_bytes", 0) + len(chunk)
            chunks.append(chunk)
        return b"".join(chunks)

    def release(self, state: dict[str, Any]) -> None:
        """The request has ended: its body's bytes are free for others."""
        self.held -= state.pop("body_bytes", 0)

    def _too_large(self) -> ApiError:
        return ApiError(413, f"the body is larger than {self.max_bytes} bytes (max_body_bytes)", None,
                        "body_too_large", dict(CLOSE))


def _refuse_surrogates(value: Any) -> None:
    """A 400 naming the first field (``messages[0].content``, ``stop[1]``) whose text is not valid Unicode."""
    todo: list[tuple[str, Any]] = [("", value)]
    while todo:
        place, item = todo.pop()
        if isinstance(item, str):
            _check_text(item, place)
        elif isinstance(item, dict):
            for key, sub in reversed(item.items()):
                here = f"{place}.{key}" if place else str(key)
                _check_text(key, here)  # a key names a field too
                todo.append((here, sub))
        elif isinstance(item, list):
            todo.extend((f"{place}[{i}]", sub) for i, sub in reversed(list(enumerate(item))))


def _check_text(text: str, place: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ApiError(400, f"{place or 'the body'}: a lone surrogate ({text[exc.start]!r}) is not valid Unicode; "
                       "send the text as UTF-8", place or None, "invalid_unicode") from None
