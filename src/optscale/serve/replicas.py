"""Shared state of ``optscale serve`` replicas (``--state redis://HOST:PORT/DB``).

Without ``--state`` every replica keeps its own state in process (:class:`InProcessIdempotency` over
:class:`~optscale.serve.idempotency.IdempotencyStore`). With it, replicas behind a load balancer share
one Redis (redis-py's asyncio client, extra ``redis``, imported only then):

- **Idempotency** (:class:`RedisIdempotency`): the same contract as the in-process store (scoped per
  caller; a key reused with another body is a 400 ``idempotency_key_reused``; a retry waits for the first
  request; a failure stores nothing; results kept ``ttl_s``). The first request takes a lock per
  (caller, key) with ``SET NX PX`` and refreshes it while it samples, so a replica that dies lets its lock
  expire within ``lock_ttl_s``; a retry on any replica waits for the finished answer (a pub/sub
  notification, with polling as a fallback) and replays it, or takes the lock over once it has expired:
  of several waiting retries exactly one samples. Redis keys hold only sha256 digests of the caller and
  the key, never either in clear.
- **Broadcast** (:meth:`SharedState.publish_reload`, :meth:`SharedState.listen_reloads`): a reload on one
  replica reaches every replica.
- **Counters** (:meth:`SharedState.add_counts`, :meth:`SharedState.counts`): one Redis hash per group
  (policy or table), incremented by every replica, so a read is the sum over replicas
  (:class:`SharedSavings`: ``/v1/optscale/savings`` of every replica).

Redis unreachable at start is an :class:`~optscale.errors.InputError` naming ``--state`` and the URL with
its password redacted. During operation every failure to reach Redis raises :class:`StateUnavailable`
(a 503 :class:`~optscale.serve.errors.ApiError`): a request that cannot hold its lock fails rather than
sample without it, so Redis trouble never doubles an episode. The client reconnects on the next call, so
service comes back with Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ..errors import InputError
from .errors import ApiError
from .idempotency import IdempotencyStore
from .savings import group_of
from .stateurl import check_state_url, redact_state_url, scrub

if TYPE_CHECKING:
    import redis.asyncio

__all__ = ["IdempotencyBackend", "InProcessIdempotency", "RedisIdempotency", "SharedSavings", "SharedState",
           "StateUnavailable",
           "redact_state_url", "check_state_url", "check_reachable"]

log = logging.getLogger("optscale.serve")

#: Lock of an episode under way: its time to live, renewed every ``LOCK_REFRESH_S`` by its owner.
LOCK_TTL_S = 10.0
LOCK_REFRESH_S = 3.0
#: Longest a waiting retry sleeps between checks when no notification comes (an owner that died).
POLL_S = 0.5
#: Largest stored answer (bytes after ``dumps``); a larger one is answered but not kept for retries.
MAX_RESULT_BYTES = 16 * 1024 * 1024
#: Redis client timeouts: an unreachable Redis fails a request within seconds, never hangs it.
CONNECT_TIMEOUT_S = 3.0
SOCKET_TIMEOUT_S = 5.0


class StateUnavailable(ApiError):
    """Redis (the replicas' shared state) cannot be reached: a 503 with ``Retry-After``; retry shortly."""

    def __init__(self, retry_after_s: int = 1):
        super().__init__(503, "the replicas' shared state (Redis) is unavailable; retry shortly", None,
                         "state_unavailable", {"Retry-After": str(retry_after_s)})


def _reused() -> ApiError:
    return ApiError(400, "this Idempotency-Key was used with a different request", "Idempotency-Key",
                    "idempotency_key_reused")


@runtime_checkable
class IdempotencyBackend(Protocol):
    """What the app calls for ``Idempotency-Key``: in process or shared by replicas."""

    async def check(self, caller: str, key: str, fingerprint: str) -> None:
        """Raise the 400 that :meth:`run` would for this key, before anything is sent (a stream's status)."""

    async def run(self, caller: str, key: str, fingerprint: str, work: Callable[[], Awaitable[Any]], *,
                  wait_s: float | None = None) -> tuple[Any, bool]:
        """``(result, replayed)``: the stored result of an earlier request with this key, or ``await work()``.
        A retry waits for a first request under way at most ``wait_s`` seconds (None: as long as it runs)."""


class InProcessIdempotency:
    """:class:`IdempotencyBackend` over one process's :class:`IdempotencyStore` (no ``--state``)."""

    def __init__(self, store: IdempotencyStore):
        self.store = store

    async def check(self, caller: str, key: str, fingerprint: str) -> None:
        self.store.check(caller, key, fingerprint)

    async def run(self, caller: str, key: str, fingerprint: str, work: Callable[[], Awaitable[Any]], *,
                  wait_s: float | None = None) -> tuple[Any, bool]:
        # in one process the first request is never lost without failing its waiters: its own deadline bounds it
        return await self.store.run(caller, key, fingerprint, work)


# -- the shared state ----------------------------------------------------------------------------------

def check_reachable(url: str, where: str = "--state") -> None:
    """Connect to ``url`` once and close (for the CLI, before the server starts, outside any event loop):
    an :class:`InputError` at ``where`` if Redis cannot be reached."""
    async def probe() -> None:
        await (await SharedState.connect(url, where=where)).aclose()

    asyncio.run(probe())


class SharedState:
    """One replica's connection to the shared Redis; make it with :meth:`connect`, close it with :meth:`aclose`.

    ``namespace`` prefixes every Redis key and channel (several deployments may share a database).
    """

    def __init__(self, client: redis.asyncio.Redis, url: str, *, namespace: str = "optscale",
                 replica: str | None = None, retry_after_s: int = 1):
        self.client = client
        self.url = redact_state_url(url)
        self.namespace = namespace
        self.replica = replica or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.retry_after_s = retry_after_s
        self._listeners: set[asyncio.Task] = set()

    @classmethod
    async def connect(cls, url: str, *, where: str = "--state", **kwargs: Any) -> SharedState:
        """Connect to the Redis at ``url`` and check it answers; an :class:`InputError` at ``where`` if not."""
        check_state_url(url, where)
        try:
            import redis.asyncio
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff
        except ImportError:
            raise InputError("shared state needs the redis extra: pip install 'optscale[redis]'", where) from None
        try:
            client = redis.asyncio.Redis.from_url(
                url, socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=SOCKET_TIMEOUT_S,
                retry=Retry(NoBackoff(), 1), health_check_interval=30)
        except (ValueError, TypeError) as exc:
            raise InputError(f"{redact_state_url(url)}: {scrub(str(exc), url)}", where) from None
        try:
            await client.ping()
        except Exception as exc:  # redis errors and OSError alike: the located message, never a traceback
            await client.aclose()
            raise InputError(f"cannot reach Redis at {redact_state_url(url)}: {scrub(_reason(exc), url)}", where) from None
        return cls(client, url, **kwargs)

    async def aclose(self) -> None:
        for task in self._listeners:
            task.cancel()
        await asyncio.gather(*self._listeners, return_exceptions=True)
        self._listeners.clear()
        await self.client.aclose()

    async def ping(self) -> bool:
        """Whether Redis answers now (for readiness); never raises."""
        try:
            with self.guard("checking readiness"):
                return bool(await self.client.ping())
        except StateUnavailable:
            return False

    def key(self, *parts: str) -> str:
        return ":".join((self.namespace, *parts))

    @contextlib.contextmanager
    def guard(self, doing: str):
        """Turn a failure to reach Redis into :class:`StateUnavailable` (logged in one line, no traceback)."""
        from redis.exceptions import RedisError

        try:
            yield
        except (RedisError, OSError) as exc:
            log.warning("shared state (Redis at %s) unavailable while %s: %s", self.url, doing, _reason(exc))
            raise StateUnavailable(self.retry_after_s) from None

    def idempotency(self, ttl_s: float, dumps: Callable[[Any], bytes], loads: Callable[[bytes], Any], *,
                    max_result_bytes: int = MAX_RESULT_BYTES, lock_ttl_s: float = LOCK_TTL_S,
                    refresh_s: float = LOCK_REFRESH_S, poll_s: float = POLL_S) -> RedisIdempotency:
        """The shared :class:`IdempotencyBackend`; ``dumps``/``loads`` turn a result into bytes and back."""
        return RedisIdempotency(self, ttl_s, dumps, loads, max_result_bytes=max_result_bytes,
                                lock_ttl_s=lock_ttl_s, refresh_s=refresh_s, poll_s=poll_s)

    # -- broadcast -------------------------------------------------------------------------------------

    async def publish_reload(self, data: str = "") -> None:
        """Tell every replica (this one too) to reload; ``data`` says what (e.g. a table's name)."""
        with self.guard("publishing a reload"):
            await self.client.publish(self.key("reload"), f"{self.replica}\n{data}")

    async def listen_reloads(self, callback: Callable[[str, str], Awaitable[None] | None], *,
                             retry_s: float = 1.0) -> None:
        """Call ``callback(data, replica)`` for every reload published by any replica (``replica``: who),
        from a background task that lives until :meth:`aclose`. Returns once subscribed. If the
        subscription breaks (Redis down), it resubscribes every ``retry_s`` and then calls
        ``callback("", "")`` once, as reloads published meanwhile were lost."""
        subscribed = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(self._listen(callback, subscribed, retry_s))
        self._listeners.add(task)
        task.add_done_callback(self._listeners.discard)
        await asyncio.wait({subscribed, task}, return_when=asyncio.FIRST_COMPLETED)
        if not subscribed.done():
            task.result()
        subscribed.result()

    async def _listen(self, callback, subscribed: asyncio.Future, retry_s: float) -> None:
        missed = False
        while True:
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                with self.guard("listening for reloads"):
                    await pubsub.subscribe(self.key("reload"))
                    if not subscribed.done():
                        subscribed.set_result(None)
                    if missed:
                        await _call(callback, "", "")
                    while True:
                        message = await pubsub.get_message(timeout=SOCKET_TIMEOUT_S)  # pings when idle
                        if message is None:
                            continue
                        replica, _, data = message["data"].decode("utf-8", "replace").partition("\n")
                        try:
                            await _call(callback, data, replica)
                        except Exception:  # a failed reload is the callback's to report; keep listening
                            log.exception("reload %r from replica %s failed", data, replica)
            except StateUnavailable as exc:
                if not subscribed.done():
                    subscribed.set_exception(exc)
                    return
                missed = True
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(retry_s)

    # -- counters --------------------------------------------------------------------------------------

    async def add_counts(self, group: str, counts: dict[str, float]) -> None:
        """Add ``counts`` to the group's counters (integers exactly, floats as Redis's HINCRBYFLOAT)."""
        if not counts:
            return
        with self.guard("counting"):
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.sadd(self.key("counters"), group)
                for name, value in counts.items():
                    if isinstance(value, int) and not isinstance(value, bool):
                        pipe.hincrby(self.key("counts", group), name, value)
                    else:
                        pipe.hincrbyfloat(self.key("counts", group), name, float(value))
                await pipe.execute()

    async def counts(self, group: str | None = None) -> dict[str, dict[str, float]]:
        """The counters summed over every replica: ``{group: {name: value}}`` (one group, or all)."""
        with self.guard("reading counters"):
            groups = [group] if group is not None else sorted(
                g.decode() for g in await self.client.smembers(self.key("counters")))
            async with self.client.pipeline(transaction=False) as pipe:
                for g in groups:
                    pipe.hgetall(self.key("counts", g))
                values = await pipe.execute()
        return {g: {k.decode(): _number(v) for k, v in sorted(h.items())} for g, h in zip(groups, values) if h}


class SharedSavings:
    """The savings counts of shadow sampling (:class:`~.savings.SavingsBackend`) summed over every replica."""

    def __init__(self, state: SharedState):
        self.state = state

    async def record(self, policy: str, table: str | None, agreed: bool, early_tokens: int, full_tokens: int) -> None:
        await self.state.add_counts(group_of(policy, table), {"episodes": 1, "agreed": int(agreed),
                                                              "early_tokens": int(early_tokens),
                                                              "full_tokens": int(full_tokens)})

    async def snapshot(self) -> dict[str, dict[str, float]]:
        return await self.state.counts()


def _number(raw: bytes) -> float:
    text = raw.decode()
    try:
        return int(text)
    except ValueError:
        return float(text)


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def _call(callback, *args) -> None:
    result = callback(*args)
    if asyncio.iscoroutine(result):
        await result


# -- idempotency in Redis -------------------------------------------------------------------------------

# KEYS: result, lock. ARGV: lock value, lock ttl (ms).
# -> {1, stored} a finished answer; {2, ""} the lock is now ours; {3, lock value} another request holds it.
_ACQUIRE = """
local stored = redis.call('GET', KEYS[1])
if stored then return {1, stored} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {2, ''} end
return {3, redis.call('GET', KEYS[2]) or ''}
"""
# KEYS: lock. ARGV: lock value, lock ttl (ms). -> 1 renewed, 0 the lock is no longer ours.
_REFRESH = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
# KEYS: lock, result, channel. ARGV: lock value, stored answer ('' = keep nothing), ttl (ms).
# Store (when given) and unlock in one step, then wake the waiting retries. -> 1, or 0 if the lock was lost.
_FINISH = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] ~= '' then redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3]) end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', KEYS[3], '1')
return 1
"""

_FP_BYTES = 64  # a fingerprint is a sha256 hex digest; stored answers start with it


class RedisIdempotency:
    """:class:`IdempotencyBackend` shared by every replica connected to one Redis (see the module's text).

    Per (caller, key) it keeps ``{ns}:idem:{digest}:lock`` (``fingerprint replica token`` while the first
    request samples) and ``{ns}:idem:{digest}:result`` (``fingerprint`` + ``dumps(result)``, for ``ttl_s``),
    and notifies ``{ns}:idem:{digest}:done`` when either changes; ``digest`` is a sha256 of caller and key.
    """

    def __init__(self, state: SharedState, ttl_s: float, dumps: Callable[[Any], bytes],
                 loads: Callable[[bytes], Any], *, max_result_bytes: int = MAX_RESULT_BYTES,
                 lock_ttl_s: float = LOCK_TTL_S, refresh_s: float = LOCK_REFRESH_S, poll_s: float = POLL_S):
        if not 0 < refresh_s < lock_ttl_s:
            raise ValueError("refresh_s must be positive and shorter than lock_ttl_s")
        self.state = state
        self.ttl_ms = max(1, round(ttl_s * 1000))
        self.dumps = dumps
        self.loads = loads
        self.max_result_bytes = max_result_bytes
        self.lock_ttl_s = lock_ttl_s
        self.refresh_s = refresh_s
        self.poll_s = poll_s
        client = state.client
        self._acquire = client.register_script(_ACQUIRE)
        self._refresh = client.register_script(_REFRESH)
        self._finish = client.register_script(_FINISH)

    def _names(self, caller: str, key: str) -> tuple[str, str, str]:
        """Lock, result and channel of (caller, key): named by a digest, in one Redis Cluster hash slot."""
        key = IdempotencyStore.check_key(key)
        c, k = caller.encode(), key.encode()
        digest = hashlib.sha256(b"%d:%b%b" % (len(c), c, k)).hexdigest()
        base = self.state.key("idem", "{" + digest + "}")
        return f"{base}:lock", f"{base}:result", f"{base}:done"

    @staticmethod
    def _check_fingerprint(fingerprint: str) -> bytes:
        fp = fingerprint.encode()
        if len(fp) != _FP_BYTES or b" " in fp:
            raise ValueError("a fingerprint is a sha256 hex digest")
        return fp

    async def check(self, caller: str, key: str, fingerprint: str) -> None:
        fp = self._check_fingerprint(fingerprint)
        lock, result, _ = self._names(caller, key)
        with self.state.guard("checking an Idempotency-Key"):
            async with self.state.client.pipeline(transaction=False) as pipe:
                pipe.getrange(result, 0, _FP_BYTES - 1)
                pipe.get(lock)
                stored_fp, owner = await pipe.execute()
        theirs = stored_fp or (owner or b"")[:_FP_BYTES]
        if theirs and theirs != fp:
            raise _reused()

    async def run(self, caller: str, key: str, fingerprint: str, work: Callable[[], Awaitable[Any]], *,
                  wait_s: float | None = None) -> tuple[Any, bool]:
        fp = self._check_fingerprint(fingerprint)
        lock, result, channel = self._names(caller, key)
        mine = b"%b %b %b" % (fp, self.state.replica.encode(), uuid.uuid4().hex.encode())
        give_up = None if wait_s is None else time.monotonic() + wait_s
        lock_ms = round(self.lock_ttl_s * 1000)
        pubsub = None
        try:
            while True:
                with self.state.guard("waiting for an Idempotency-Key"):
                    kind, value = await self._acquire(keys=[result, lock], args=[mine, lock_ms])
                if kind == 2:
                    break
                if value[:_FP_BYTES] != fp:  # an answer, or a first request under way, for another body
                    raise _reused()
                if kind == 1:
                    return self.loads(value[_FP_BYTES:]), True
                if pubsub is None:  # subscribe, then check again: a notification from now on is not missed
                    pubsub = self.state.client.pubsub(ignore_subscribe_messages=True)
                    with self.state.guard("waiting for an Idempotency-Key"):
                        await pubsub.subscribe(channel)
                    continue
                timeout = self.poll_s
                if give_up is not None:
                    timeout = min(timeout, give_up - time.monotonic())
                    if timeout <= 0:
                        raise ApiError(409, "the first request with this Idempotency-Key is still under way; "
                                       "retry later", "Idempotency-Key", "idempotent_request_in_progress",
                                       {"Retry-After": str(self.state.retry_after_s)})
                with self.state.guard("waiting for an Idempotency-Key"):
                    await pubsub.get_message(timeout=timeout)
        finally:
            if pubsub is not None:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
        return await self._own(lock, result, channel, mine, fp, work), False

    async def _own(self, lock: str, result: str, channel: str, mine: bytes, fp: bytes,
                   work: Callable[[], Awaitable[Any]]) -> Any:
        """Run ``work`` holding the lock; store its result, or nothing if it fails. If the lock cannot be
        kept (Redis gone, or the lock lost), ``work`` is cancelled and :class:`StateUnavailable` raised."""
        worker = asyncio.ensure_future(work())
        keeper = asyncio.create_task(self._keep(lock, mine))
        finished = False
        try:
            await asyncio.wait({worker, keeper}, return_when=asyncio.FIRST_COMPLETED)
            if not worker.done():  # the keeper failed: sampling on would risk a second episode
                worker.cancel()
                await asyncio.gather(worker, return_exceptions=True)
                keeper.result()
            answer = worker.result()
            payload = self.dumps(answer)
            if len(payload) > self.max_result_bytes:
                log.warning("an Idempotency-Key answer of %d bytes is not kept (more than %d)", len(payload),
                            self.max_result_bytes)
                payload = b""
            stored = fp + payload if payload else b""
            with self.state.guard("storing an Idempotency-Key answer"):
                kept = await self._finish(keys=[lock, result, channel], args=[mine, stored, self.ttl_ms])
            if not kept:
                log.warning("an Idempotency-Key lock expired before its answer was stored")
            finished = True
            return answer
        finally:
            keeper.cancel()
            if not worker.done():
                worker.cancel()
            await asyncio.gather(worker, keeper, return_exceptions=True)
            if not finished:  # a failure stores nothing; unlock so that a retry samples at once
                await self._release(lock, result, channel, mine)

    async def _keep(self, lock: str, mine: bytes) -> None:
        """Renew the lock every ``refresh_s``; returns never, raises when it can no longer vouch for it."""
        lock_ms = round(self.lock_ttl_s * 1000)
        held_until = time.monotonic() + self.lock_ttl_s
        while True:
            await asyncio.sleep(self.refresh_s)
            try:
                with self.state.guard("renewing an Idempotency-Key lock"):
                    renewed = await self._refresh(keys=[lock], args=[mine, lock_ms])
            except StateUnavailable:
                if time.monotonic() + self.refresh_s >= held_until:  # it may expire before the next try
                    raise
                continue
            if not renewed:
                log.warning("an Idempotency-Key lock was lost (Redis restarted?); the request is cancelled")
                raise StateUnavailable(self.state.retry_after_s)
            held_until = time.monotonic() + self.lock_ttl_s

    async def _release(self, lock: str, result: str, channel: str, mine: bytes) -> None:
        try:
            with self.state.guard("releasing an Idempotency-Key lock"):
                await asyncio.shield(self._finish(keys=[lock, result, channel], args=[mine, b"", self.ttl_ms]))
        except StateUnavailable:
            pass  # the lock expires on its own within lock_ttl_s
