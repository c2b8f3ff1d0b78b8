"""Shared state of `optscale serve` replicas (`--state redis://...`) against a real redis-server.

Each "replica" is its own SharedState (its own Redis connections and replica id) in this process, or a
separate process where a replica must die (SIGKILL).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import need, need_module

need_module("redis", "the redis extra is not installed (pip install 'optscale[redis]')")  # scripts/test.sh installs it

from optscale.errors import InputError  # noqa: E402
from optscale.serve.errors import ApiError  # noqa: E402
from optscale.serve.idempotency import IdempotencyStore  # noqa: E402
from optscale.serve.replicas import (  # noqa: E402
    IdempotencyBackend, InProcessIdempotency, SharedState, StateUnavailable, check_reachable, redact_state_url,
)

WAIT_S = 30.0  # generous bound of every wait on a condition


def fp(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def dumps(value) -> bytes:
    return json.dumps(value).encode()


def loads(raw: bytes):
    return json.loads(raw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A real redis-server on 127.0.0.1 (no persistence) that a test may stop and start again."""

    def __init__(self, exe: str):
        self.exe = exe
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([self.exe, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
                                      "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + WAIT_S
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=WAIT_S)
        self.proc = None


def _redis_exe() -> str:
    exe = shutil.which("redis-server")
    need(exe, "redis-server is not installed (scripts/test.sh installs it: apt-get install redis-server)")
    return exe


@pytest.fixture(scope="module")
def shared_server():
    server = RedisServer(_redis_exe())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def server(shared_server):
    """The module's Redis, emptied for each test."""
    import redis

    with redis.Redis.from_url(shared_server.url) as client:
        client.flushall()
    return shared_server


@pytest.fixture
def own_server():
    """A Redis of this test alone (it stops and restarts it)."""
    server = RedisServer(_redis_exe())
    server.start()
    yield server
    server.stop()


async def until(condition, what: str) -> None:
    """Wait for ``condition()`` (sync or async) to hold, at most WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def replicas(url: str, n: int = 2):
    """``n`` replicas' connections (replica ids r0, r1, ...), closed at the end."""
    async with contextlib.AsyncExitStack() as stack:
        states = [await SharedState.connect(url, replica=f"r{i}") for i in range(n)]
        for state in states:
            stack.push_async_callback(state.aclose)
        yield states


async def waiters(state: SharedState) -> int:
    """Retries subscribed to some Idempotency-Key's notification (waiting for a first request)."""
    channels = [c for c in await state.client.pubsub_channels(f"{state.namespace}:idem:*")]
    counts = await state.client.pubsub_numsub(*channels) if channels else []
    return sum(n for _, n in counts)


class Work:
    """An episode that counts its runs and finishes when told."""

    def __init__(self, result="answer"):
        self.runs = 0
        self.started = asyncio.Event()
        self.go = asyncio.Event()
        self.result = result

    async def __call__(self):
        self.runs += 1
        self.started.set()
        await self.go.wait()
        return {"text": self.result, "run": self.runs}


def test_two_replicas_same_key_at_once_sample_once(server):
    async def main():
        async with replicas(server.url) as (a, b):
            # no polling within the test's time: the retry learns of the answer by its notification
            ia, ib = a.idempotency(60, dumps, loads), b.idempotency(60, dumps, loads, poll_s=10 * WAIT_S)
            assert isinstance(ia, IdempotencyBackend)
            work = Work()
            first = asyncio.create_task(ia.run("key-1", "idem", fp("body"), work))
            await asyncio.wait_for(work.started.wait(), WAIT_S)
            second = asyncio.create_task(ib.run("key-1", "idem", fp("body"), work))
            await until(lambda: waiters(b), "the retry to wait")
            work.go.set()
            (r1, replayed1), (r2, replayed2) = await asyncio.wait_for(asyncio.gather(first, second), WAIT_S)
            assert work.runs == 1
            assert r1 == r2 == {"text": "answer", "run": 1}
            assert (replayed1, replayed2) == (False, True)
            # a later retry on either replica replays too; another caller's same key is its own
            assert await ia.run("key-1", "idem", fp("body"), work) == (r1, True)
            assert (await ib.run("key-2", "idem", fp("body"), work))[1] is False
            assert work.runs == 2

    asyncio.run(main())


def test_redis_keeps_digests_never_client_keys(server):
    async def main():
        async with replicas(server.url, 1) as (a,):
            work = Work()
            work.go.set()
            await a.idempotency(60, dumps, loads).run("sk-secret-client", "my-idem-key", fp("body"), work)
            stored = {k: await a.client.get(k) for k in await a.client.keys("*")}
            assert len(stored) == 1
            for name, value in stored.items():
                for secret in (b"sk-secret-client", b"my-idem-key"):
                    assert secret not in name and secret not in value

    asyncio.run(main())


OWNER = textwrap.dedent("""
    import asyncio, json, sys
    from optscale.serve.replicas import SharedState

    async def main(url, fingerprint):
        state = await SharedState.connect(url, replica="doomed")
        store = state.idempotency(60, lambda v: json.dumps(v).encode(), json.loads, lock_ttl_s=1.5, refresh_s=0.3)

        async def work():
            print("owning", flush=True)
            await asyncio.Event().wait()

        await store.run("key-1", "idem", fingerprint, work)

    asyncio.run(main(sys.argv[1], sys.argv[2]))
""")


def test_owner_killed_lock_expires_one_retry_samples_once(server):
    owner = subprocess.Popen([sys.executable, "-c", OWNER, server.url, fp("body")], stdout=subprocess.PIPE,
                             text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert owner.stdout.readline().strip() == "owning"

        async def main():
            async with replicas(server.url) as (a, b):
                stores = [s.idempotency(60, dumps, loads, lock_ttl_s=1.5, refresh_s=0.3) for s in (a, b) * 3]
                work = Work("after the owner died")
                work.go.set()
                retries = [asyncio.create_task(s.run("key-1", "idem", fp("body"), work)) for s in stores]
                await until(lambda: waiters(a), "the retries to wait")
                assert work.runs == 0  # the owner's lock holds them while it lives
                os.kill(owner.pid, signal.SIGKILL)
                owner.wait(timeout=WAIT_S)
                results = await asyncio.wait_for(asyncio.gather(*retries), WAIT_S)
                assert work.runs == 1
                assert {json.dumps(r) for r, _ in results} == {json.dumps({"text": "after the owner died", "run": 1})}
                assert sorted(replayed for _, replayed in results) == [False] + [True] * 5

        asyncio.run(main())
    finally:
        owner.kill()
        owner.wait(timeout=WAIT_S)
        owner.stdout.close()


def test_key_reused_with_another_body_is_a_400(server):
    async def main():
        async with replicas(server.url) as (a, b):
            ia, ib = a.idempotency(60, dumps, loads), b.idempotency(60, dumps, loads)
            work = Work()
            first = asyncio.create_task(ia.run("c", "idem", fp("body"), work))
            await asyncio.wait_for(work.started.wait(), WAIT_S)
            for attempt in (ib.check("c", "idem", fp("other")), ib.run("c", "idem", fp("other"), work)):
                with pytest.raises(ApiError) as err:  # while the first is under way
                    await attempt
                assert (err.value.status, err.value.code, err.value.param) == (
                    400, "idempotency_key_reused", "Idempotency-Key")
            await ib.check("c", "idem", fp("body"))  # the same body is fine
            work.go.set()
            await first
            with pytest.raises(ApiError) as err:  # and after it finished
                await ib.check("c", "idem", fp("other"))
            assert err.value.code == "idempotency_key_reused"
            with pytest.raises(ApiError) as err:
                await ib.run("c", "idem", fp("other"), work)
            assert err.value.code == "idempotency_key_reused"
            with pytest.raises(ApiError) as err:
                await ib.run("c", "\n", fp("body"), work)
            assert err.value.code == "invalid_idempotency_key"
            assert work.runs == 1

    asyncio.run(main())


def test_a_failure_stores_nothing_and_unlocks(server):
    async def main():
        async with replicas(server.url) as (a, b):
            # a long lock and no polling: only the unlock and its notification let the retry go on in time
            ia, ib = (s.idempotency(60, dumps, loads, lock_ttl_s=600, refresh_s=300, poll_s=600) for s in (a, b))
            failing = Work()

            async def fail():
                await failing()
                raise RuntimeError("upstream down")

            first = asyncio.create_task(ia.run("c", "idem", fp("body"), fail))
            await asyncio.wait_for(failing.started.wait(), WAIT_S)
            work = Work("second try")
            work.go.set()
            waiting = asyncio.create_task(ib.run("c", "idem", fp("body"), work))
            await until(lambda: waiters(b), "the retry to wait")
            failing.go.set()
            with pytest.raises(RuntimeError, match="upstream down"):
                await first
            assert await asyncio.wait_for(waiting, WAIT_S) == ({"text": "second try", "run": 1}, False)
            assert await ia.run("c", "idem", fp("body"), work) == ({"text": "second try", "run": 1}, True)
            assert work.runs == 1

    asyncio.run(main())


def test_cancelled_owner_unlocks(server):
    async def main():
        async with replicas(server.url, 1) as (a,):
            store = a.idempotency(60, dumps, loads, lock_ttl_s=600, refresh_s=300)
            work = Work()
            first = asyncio.create_task(store.run("c", "idem", fp("body"), work))
            await asyncio.wait_for(work.started.wait(), WAIT_S)
            first.cancel()  # the client went away
            await asyncio.gather(first, return_exceptions=True)
            assert await a.client.keys("*") == []
            work.go.set()
            assert await asyncio.wait_for(store.run("c", "idem", fp("body"), work), WAIT_S) == (
                {"text": "answer", "run": 2}, False)

    asyncio.run(main())


def test_an_answer_too_large_is_answered_not_kept(server):
    async def main():
        async with replicas(server.url, 1) as (a,):
            store = a.idempotency(60, dumps, loads, max_result_bytes=100)
            work = Work("x" * 200)
            work.go.set()
            assert (await store.run("c", "idem", fp("body"), work))[1] is False
            assert (await store.run("c", "idem", fp("body"), work)) == ({"text": "x" * 200, "run": 2}, False)

    asyncio.run(main())


def test_a_retry_waits_at_most_wait_s(server):
    async def main():
        async with replicas(server.url) as (a, b):
            work = Work()
            first = asyncio.create_task(a.idempotency(60, dumps, loads).run("c", "idem", fp("body"), work))
            await asyncio.wait_for(work.started.wait(), WAIT_S)
            with pytest.raises(ApiError) as err:
                await b.idempotency(60, dumps, loads).run("c", "idem", fp("body"), work, wait_s=0.2)
            assert (err.value.status, err.value.code) == (409, "idempotent_request_in_progress")
            work.go.set()
            assert (await first)[1] is False
            assert work.runs == 1

    asyncio.run(main())


def test_results_expire_after_ttl(server):
    async def main():
        async with replicas(server.url, 1) as (a,):
            store = a.idempotency(0.2, dumps, loads)
            work = Work()
            work.go.set()
            await store.run("c", "idem", fp("body"), work)
            await until(lambda: _no_keys(a), "the answer to expire")
            assert (await store.run("c", "idem", fp("body"), work))[1] is False
            assert work.runs == 2

    asyncio.run(main())


async def _no_keys(state: SharedState) -> bool:
    return await state.client.keys("*") == []


def test_reload_broadcast_reaches_every_replica(server):
    async def main():
        async with replicas(server.url) as (a, b):
            got: dict[str, list] = {"r0": [], "r1": []}
            for state in (a, b):
                await state.listen_reloads(lambda data, origin, me=state.replica: got[me].append((data, origin)))
            await a.publish_reload("table.json")
            await until(lambda: all(got.values()), "both replicas to hear the reload")
            assert got == {"r0": [("table.json", "r0")], "r1": [("table.json", "r0")]}

    asyncio.run(main())


def test_counters_sum_across_replicas(server):
    async def main():
        async with replicas(server.url) as (a, b):
            await a.add_counts("optscale", {"requests": 2, "samples_saved": 5, "tokens_saved": 1.5})
            await b.add_counts("optscale", {"requests": 3, "tokens_saved": 2.25})
            await b.add_counts("learned:t.json", {"requests": 1})
            expected = {"learned:t.json": {"requests": 1},
                        "optscale": {"requests": 5, "samples_saved": 5, "tokens_saved": 3.75}}
            assert await a.counts() == await b.counts() == expected
            assert await a.counts("optscale") == {"optscale": expected["optscale"]}
            assert await a.counts("none") == {}

    asyncio.run(main())


def test_redis_down_mid_way_is_503_never_a_second_episode_and_recovers(own_server):
    async def main():
        async with replicas(own_server.url) as (a, b):
            ia, ib = (s.idempotency(60, dumps, loads, lock_ttl_s=1.5, refresh_s=0.3, poll_s=0.1) for s in (a, b))
            heard: list = []
            await b.listen_reloads(lambda data, origin: heard.append((data, origin)), retry_s=0.1)
            work = Work()
            cancelled = asyncio.Event()

            async def episode():
                try:
                    return await work()
                except asyncio.CancelledError:
                    cancelled.set()
                    raise

            owner = asyncio.create_task(ia.run("c", "idem", fp("body"), episode))
            await asyncio.wait_for(work.started.wait(), WAIT_S)
            retry = asyncio.create_task(ib.run("c", "idem", fp("body"), episode))
            await until(lambda: waiters(b), "the retry to wait")
            own_server.stop()
            # the waiting retry and the owner (which can no longer vouch for its lock) both fail with 503
            for task in (retry, owner):
                with pytest.raises(StateUnavailable) as err:
                    await asyncio.wait_for(task, WAIT_S)
                assert (err.value.status, err.value.code) == (503, "state_unavailable")
                assert err.value.headers == {"Retry-After": "1"}
            assert cancelled.is_set() and work.runs == 1
            assert not await a.ping()
            with pytest.raises(StateUnavailable):  # a new request too, at once
                await ib.run("c", "idem", fp("body"), episode)
            with pytest.raises(StateUnavailable):
                await a.publish_reload()
            with pytest.raises(StateUnavailable):
                await a.counts()
            assert work.runs == 1
            own_server.start()
            assert await a.ping()
            # Redis is back (empty): the next requests reconnect and work
            work.go.set()
            assert await ib.run("c", "idem", fp("body"), episode) == ({"text": "answer", "run": 2}, False)
            assert await ia.run("c", "idem", fp("body"), episode) == ({"text": "answer", "run": 2}, True)
            # the listener resubscribed and asked for a reload, as reloads may have been missed meanwhile
            await until(lambda: heard == [("", "")], "the listener to resubscribe")
            await a.publish_reload("t.json")
            await until(lambda: heard[-1] == ("t.json", "r0"), "a reload after the outage")

    asyncio.run(main())


def test_bad_or_unreachable_url_is_a_located_error_without_the_password():
    port = free_port()  # nothing listens there
    cases = {
        f"redis://user:hunter2@127.0.0.1:{port}/0": "cannot reach Redis at redis://user:***@127.0.0.1",
        "http://:hunter2@127.0.0.1:6379/0": "a Redis URL starts with redis://",
        "redis://:hunter2@127.0.0.1:6379/zero": "the database is a number",
        "redis://:hunter2@127.0.0.1:notaport/0": "is not a URL",
        "redis:///0": "no host",
        f"redis://127.0.0.1:{port}/0?password=hunter2": "cannot reach Redis at redis://127.0.0.1",
    }

    async def main():
        for url, message in cases.items():
            with pytest.raises(InputError) as err:
                await SharedState.connect(url)
            assert err.value.where == "--state", url
            assert message in str(err.value), (url, str(err.value))
            assert "hunter2" not in str(err.value)

    asyncio.run(main())
    assert redact_state_url("rediss://:pw@h:1/2") == "rediss://:***@h:1/2"
    assert redact_state_url("redis://h:1/2") == "redis://h:1/2"
    assert redact_state_url("redis://h:1/2?password=pw&db=3") == "redis://h:1/2?password=***&db=3"


def test_check_reachable_before_the_server_starts(server):
    check_reachable(server.url)  # no error
    with pytest.raises(InputError) as err:
        check_reachable(f"redis://:hunter2@127.0.0.1:{free_port()}/0", "state")
    assert err.value.where == "state" and "cannot reach Redis" in str(err.value) and "hunter2" not in str(err.value)


def test_without_the_redis_extra_the_error_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "redis.asyncio", None)  # as if redis-py were not installed
    with pytest.raises(InputError) as err:
        asyncio.run(SharedState.connect("redis://127.0.0.1:6379/0"))
    assert err.value.where == "--state" and "pip install 'optscale[redis]'" in str(err.value)


def test_in_process_backend_keeps_todays_behaviour():
    async def main():
        backend = InProcessIdempotency(IdempotencyStore(60, 10, 1 << 20, lambda r: 1))
        assert isinstance(backend, IdempotencyBackend)
        work = Work()
        work.go.set()
        assert await backend.run("c", "idem", fp("body"), work) == ({"text": "answer", "run": 1}, False)
        assert await backend.run("c", "idem", fp("body"), work) == ({"text": "answer", "run": 1}, True)
        with pytest.raises(ApiError) as err:
            await backend.check("c", "idem", fp("other"))
        assert err.value.code == "idempotency_key_reused"

    asyncio.run(main())
