"""``Idempotency-Key``: a retry of the same request gets the stored result instead of sampling again.

The OpenAI SDK retries timeouts, 408/409/429 and 5xx twice by default; without this a retry
would pay for a whole episode again. Results are kept in memory for ``ttl_s`` (at most
``max_entries``, and ``max_bytes`` of results as ``size`` measures them; oldest dropped first), per
caller: the key is scoped to the client key that sent it. A retry that arrives while the first
request still samples waits for its result. A key reused with a different body is refused (400
naming ``Idempotency-Key``); a request that fails stores nothing, so its retry samples again.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import ApiError

__all__ = ["IdempotencyStore"]

MAX_KEY_CHARS = 255


@dataclass
class _Entry:
    fingerprint: str
    future: asyncio.Future
    expires: float = float("inf")
    size: int = 0


class IdempotencyStore:
    """Results by (caller, key), with a time to live and a size bound."""

    def __init__(self, ttl_s: float, max_entries: int, max_bytes: int, size: Callable[[Any], int],
                 clock: Callable[[], float] = time.monotonic):
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.size = size
        self.clock = clock
        self.bytes = 0
        self._pending: dict[tuple[str, str], _Entry] = {}  # still sampling
        # finished, in the order they finished: the order they expire in (one ttl for all), so expiring
        # looks only at the entries that are due, never at every entry
        self._done: collections.OrderedDict[tuple[str, str], _Entry] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._pending) + len(self._done)

    def _get(self, name: tuple[str, str]) -> _Entry | None:
        entry = self._done.get(name)
        return entry if entry is not None else self._pending.get(name)

    @staticmethod
    def check_key(key: str) -> str:
        if not key or len(key) > MAX_KEY_CHARS or not key.isprintable():
            raise ApiError(400, f"an Idempotency-Key is 1 to {MAX_KEY_CHARS} printable characters", "Idempotency-Key",
                           "invalid_idempotency_key")
        return key

    def _drop(self, name: tuple[str, str]) -> None:
        entry = self._done.pop(name, None)
        if entry is not None:
            self.bytes -= entry.size
        else:
            self._pending.pop(name, None)

    def _expire(self) -> None:
        now = self.clock()
        while self._done:
            name, entry = next(iter(self._done.items()))
            if entry.expires > now:
                break
            self._drop(name)

    def check(self, caller: str, key: str, fingerprint: str) -> None:
        """Raise the 400 that :meth:`run` would for this key, before anything is sent (a stream's status)."""
        self._expire()
        entry = self._get((caller, self.check_key(key)))
        if entry is not None and entry.fingerprint != fingerprint:
            raise ApiError(400, "this Idempotency-Key was used with a different request", "Idempotency-Key",
                           "idempotency_key_reused")

    async def run(self, caller: str, key: str, fingerprint: str, work: Callable[[], Any]) -> tuple[Any, bool]:
        """``(result, replayed)``: the stored result of an earlier request with this key, or ``await work()``."""
        self._expire()
        name = (caller, self.check_key(key))
        entry = self._get(name)
        if entry is not None:
            if entry.fingerprint != fingerprint:
                raise ApiError(400, "this Idempotency-Key was used with a different request", "Idempotency-Key",
                               "idempotency_key_reused")
            return await asyncio.shield(entry.future), True
        entry = _Entry(fingerprint, asyncio.get_running_loop().create_future())
        entry.future.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved: no warning
        self._pending[name] = entry
        while len(self) > self.max_entries:  # the oldest finished first
            self._drop(next(iter(self._done or self._pending)))
        try:
            result = await work()
        except BaseException as exc:
            self._drop(name)
            if not entry.future.done():
                entry.future.set_exception(exc if isinstance(exc, ApiError) else ApiError(
                    409, "the first request with this Idempotency-Key did not finish; retry", "Idempotency-Key",
                    "idempotent_request_interrupted"))
            raise
        entry.future.set_result(result)
        if self._pending.get(name) is entry:  # not dropped meanwhile
            del self._pending[name]
            entry.expires = self.clock() + self.ttl_s
            entry.size = self.size(result)
            self._done[name] = entry
            self.bytes += entry.size
            while self.bytes > self.max_bytes:
                self._drop(next(iter(self._done)))
        return result, False
