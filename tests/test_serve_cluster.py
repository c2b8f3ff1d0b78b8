"""Two ``optscale serve`` replicas sharing a real Redis behind a real HAProxy, in front of the fake upstream.

Everything is started here on 127.0.0.1 (``redis-server`` and ``haproxy``, Debian packages;
scripts/test.sh installs them): the replicas are ``optscale serve --state redis://...`` subprocesses,
the upstream is the fake server in a thread, recording every generation request's session header
(``--upstream-session-header``: the episode's request id), so the distinct session ids it saw per
prompt are the episodes sampled for it.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import live_fakes as fakes
import pytest

from conftest import need, need_module, wait_for
from test_serve_reload import save_table

pytestmark = pytest.mark.slow

need(shutil.which("redis-server"), "redis-server is not installed (apt-get install redis-server)")
need(shutil.which("haproxy"), "haproxy is not installed (apt-get install haproxy)")
need_module("redis", "the redis extra is not installed (pip install 'optscale[redis]')")

SESSION = "X-Session-Id"
REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def body(tag: str) -> dict:
    return {"model": "fake-model", "messages": [{"role": "user", "content": f"Problem {tag}: how many?"}],
            "optscale": {"policy": "bon", "n_max": 2}}


class Upstream(fakes.FakeServer):
    """The fake upstream recording (prompt, session header) of every generation request; those for a prompt
    in ``held`` wait (an episode kept under way as long as a test needs)."""

    def __init__(self, config: fakes.FakeConfig | None = None):
        super().__init__(config)
        self.seen: list[tuple[str, str | None]] = []
        self.held: set[str] = set()

        @self.app.middleware("http")
        async def record(request, call_next):
            if request.url.path.endswith("/completions"):
                payload = json.loads(await request.body())
                content = payload["messages"][-1]["content"]
                self.seen.append((content, request.headers.get(SESSION)))
                while any(f"Problem {tag}:" in content for tag in self.held):
                    await asyncio.sleep(0.01)
            return await call_next(request)

    def sessions(self, tag: str) -> set[str | None]:
        """The episodes sampled for prompt ``tag`` (their session ids)."""
        return {s for content, s in list(self.seen) if f"Problem {tag}:" in content}


class Redis:
    def __init__(self, tmp: Path):
        self.port, self.tmp, self.proc = free_port(), tmp, None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(self.tmp)], stdout=subprocess.DEVNULL)
        wait_for(lambda: self.cli("ping").strip() == "PONG", 20, "redis-server up")

    def cli(self, *args: str) -> str:
        return subprocess.run(["redis-cli", "-p", str(self.port), *args], capture_output=True, text=True).stdout

    def waiting(self) -> bool:
        """Whether a request waits for another's Idempotency-Key answer (it listens for it)."""
        return bool(self.cli("pubsub", "channels", "optscale:idem:*:done").strip())

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class Replica:
    def __init__(self, name: str, args: list[str], tmp: Path):
        self.name, self.args, self.port, self.log = name, args, free_port(), tmp / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "optscale", "serve", *self.args, "--port",
                                          str(self.port)], stdout=log, stderr=subprocess.STDOUT, env=env)
        wait_for(self.ready, 60, f"replica {self.name} ready")

    def ready(self) -> bool:
        assert self.proc.poll() is None, self.log.read_text()
        try:
            return httpx.get(self.base + "/ready").status_code == 200
        except httpx.TransportError:
            return False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


HAPROXY_CFG = """
global
    maxconn 4096
defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    retries 3
    option redispatch
    option http-buffer-request
    retry-on conn-failure empty-response 503
frontend proxy
    bind 127.0.0.1:{port}
    default_backend replicas
backend replicas
    balance roundrobin
    http-reuse never
    option httpchk GET /ready
    http-check expect status 200
    default-server check inter 100ms fall 1 rise 1
{servers}
"""


class Cluster:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.upstream = Upstream(fakes.FakeConfig(min_tokens=8, max_tokens=12))
        self.redis = Redis(tmp)
        self.replicas: list[Replica] = []
        self.haproxy: subprocess.Popen | None = None
        self.port = free_port()

    def __enter__(self) -> Cluster:
        self.upstream.__enter__()
        try:
            self._start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _start(self) -> None:
        self.redis.start()
        self.tables = self.tmp / "tables"
        save_table(self.tables, "t4.json")
        args = ["--upstream", self.upstream.base_url, "--model", "fake-model", "--scorer", "confidence",
                "--state", self.redis.url, "--upstream-session-header", SESSION, "--drain-s", "20",
                "--tables-dir", str(self.tables)]
        self.replicas = [Replica(f"r{i}", args, self.tmp) for i in range(2)]
        self.ensure()
        cfg = self.tmp / "haproxy.cfg"
        cfg.write_text(HAPROXY_CFG.format(port=self.port, servers="\n".join(
            f"    server {r.name} 127.0.0.1:{r.port}" for r in self.replicas)))
        subprocess.run(["haproxy", "-c", "-q", "-f", str(cfg)], check=True)
        self.haproxy = subprocess.Popen(["haproxy", "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        wait_for(lambda: self._get("/ready") == 200, 20, "haproxy up")

    def _get(self, path: str) -> int | None:
        try:
            return httpx.get(self.url + path).status_code
        except httpx.TransportError:
            return None

    def ensure(self) -> None:
        """Every replica running (a test may have killed one), Redis up."""
        if self.redis.proc.poll() is not None:
            self.redis.start()
        for r in self.replicas:
            if not r.alive():
                r.start()

    def __exit__(self, *exc: object) -> None:
        for proc in [self.haproxy, *(r.proc for r in self.replicas), self.redis.proc]:  # those started
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)
        self.upstream.__exit__(*exc)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with Cluster(tmp_path_factory.mktemp("cluster")) as c:
        yield c


@pytest.fixture
def c(cluster):
    cluster.upstream.held.clear()
    cluster.ensure()
    wait_for(lambda: cluster._get("/ready") == 200, 20, "haproxy routing")
    return cluster


def post(base: str, tag: str, key: str | None = None, timeout: float = 60) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key else {}
    return httpx.post(base + "/v1/chat/completions", json=body(tag), headers=headers, timeout=timeout)


def test_the_same_key_at_both_replicas_at_once_samples_once(c):
    a, b = c.replicas
    c.upstream.held.add("same")  # both requests arrive while the first samples
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(post, a.base, "same", "k-same")
        wait_for(lambda: c.upstream.sessions("same"), 20, "the upstream sampling")
        second = pool.submit(post, b.base, "same", "k-same")
        wait_for(c.redis.waiting, 20, "replica b waiting for replica a's answer")
        c.upstream.held.clear()
        ra, rb = first.result(), second.result()
    assert ra.status_code == rb.status_code == 200, (ra.text, rb.text)
    assert ra.content == rb.content  # the same answer, byte for byte (its id and created included)
    assert len(c.upstream.sessions("same")) == 1
    rid = ra.json()["id"].removeprefix("chatcmpl-")
    assert c.upstream.sessions("same") == {rid}  # every upstream request of the episode named it


def test_a_retry_after_the_owner_is_killed_samples_once_more_and_answers(c):
    a, b = c.replicas
    c.upstream.held.add("killed")
    with ThreadPoolExecutor(1) as pool:
        lost = pool.submit(post, a.base, "killed", "k-killed")
        wait_for(lambda: c.upstream.sessions("killed"), 20, "the upstream sampling for replica a")
        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait(10)
        with pytest.raises(httpx.TransportError):
            lost.result()
    c.upstream.held.clear()
    retry = post(b.base, "killed", "k-killed")  # waits for the dead owner's lock to expire, then samples
    assert retry.status_code == 200, retry.text
    assert len(c.upstream.sessions("killed")) == 2
    a.start()
    again = post(a.base, "killed", "k-killed")  # the answer is kept for every replica, a restarted one too
    assert again.content == retry.content and len(c.upstream.sessions("killed")) == 2


def test_sigterm_drains_behind_haproxy(c):
    a, b = c.replicas
    c.upstream.held.add("drained")
    with ThreadPoolExecutor(1) as pool:
        under_way = pool.submit(post, a.base, "drained")
        wait_for(lambda: c.upstream.sessions("drained"), 20, "the upstream sampling for replica a")
        a.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: not a.ready(), 5, "replica a no longer ready")  # at once: 503, or no more connections
        during = [post(c.url, f"during{i}") for i in range(4)]  # haproxy sends new requests to replica b
        assert [r.status_code for r in during] == [200] * 4, [r.text for r in during]
        assert a.proc.poll() is None  # a still drains its episode
        c.upstream.held.clear()
        done = under_way.result()
    assert done.status_code == 200, done.text  # the episode under way finished within drain_s
    assert a.proc.wait(20) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has shut down
    assert "Traceback" not in a.log.read_text()


def test_a_table_reload_on_one_replica_reaches_the_other(c):
    a, b = c.replicas

    def ask(replica: Replica) -> httpx.Response:
        return httpx.post(replica.base + "/v1/chat/completions", timeout=60, json={
            **body("reload"), "optscale": {"policy": "learned", "table": "new.json", "n_max": 4}})

    save_table(c.tables, "new.json")
    assert "no stopping table 'new.json'" in ask(b).json()["error"]["message"]  # read at start and on reloads
    r = httpx.post(a.base + "/v1/optscale/tables/reload", timeout=60)
    assert r.status_code == 200 and {t["name"]: t["status"] for t in r.json()["tables"]}["new.json"] == "loaded"
    wait_for(lambda: ask(b).status_code == 200, 20, "replica b reloading on replica a's broadcast")
    # the log wraps long lines: compare with the white space folded, and wait for the line to be written
    wait_for(lambda: "stopping tables reloaded (broadcast by replica" in " ".join(b.log.read_text().split()), 20,
             "replica b logging the broadcast reload")


def test_savings_are_summed_over_replicas(cluster, tmp_path):
    """Shadow sampling's counts (``/v1/optscale/savings``) of two in-process replicas sharing a Redis database."""
    from serve_fakes import Proxy

    url = cluster.redis.url.removesuffix("/0") + "/1"  # a database of its own
    early = {**body("savings"), "optscale": {"policy": "firstpass", "t": 0.5, "n_max": 4}}
    with Upstream() as up, Proxy(up.base_url, state=url, shadow_share=1.0, n_max=4) as pa, \
            Proxy(up.base_url, state=url, shadow_share=1.0, n_max=4) as pb:
        for proxy, n in ((pa, 2), (pb, 3)):
            for _ in range(n):
                assert httpx.post(proxy.url("/v1/chat/completions"), json=early, timeout=60).status_code == 200

        def rows(proxy) -> list[dict]:
            return httpx.get(proxy.url("/v1/optscale/savings")).json()["data"]

        wait_for(lambda: [r["episodes"] for r in rows(pa)] == [5], 60, "five shadow episodes counted")
        assert rows(pb) == rows(pa) and rows(pa)[0]["policy"] == "firstpass"


def test_upstream_session_header_names_the_episode_on_every_upstream_request(tmp_path):
    """Without the cluster: one in-process proxy, every generation request of an episode carries the id."""
    from serve_fakes import Proxy

    with Upstream() as up, Proxy(up.base_url, upstream_session_header=SESSION) as proxy:
        ids = []
        for tag in ("s1", "s2"):
            r = post(proxy.url(""), tag)
            assert r.status_code == 200, r.text
            ids.append(r.json()["id"].removeprefix("chatcmpl-"))
        for tag, rid in zip(("s1", "s2"), ids):
            requests = [s for content, s in up.seen if f"Problem {tag}:" in content]
            assert len(requests) >= 2 and set(requests) == {rid}


# Last in the file: after a Redis outage a replica's reload listener reconnects with a back-off (catching up with
# the reloads it missed), so the broadcast test above runs before it.
def test_redis_stopped_and_restarted_mid_load(c):
    stop = threading.Event()
    results: list[tuple[str, int, bytes]] = []

    def client(worker: int) -> None:
        i = 0
        while not stop.is_set():
            tag = f"load{worker}-{i}"
            with ThreadPoolExecutor(2) as pool:  # each key at both replicas at once
                pair = [pool.submit(post, r.base, tag, f"k-{tag}") for r in c.replicas]
                for f in pair:
                    r = f.result()
                    results.append((tag, r.status_code, r.content))
            i += 1

    threads = [threading.Thread(target=client, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: sum(s == 200 for _, s, _ in results) >= 6, 30, "answers before the outage")
        c.redis.stop()
        outage = len(results)
        wait_for(lambda: any(s == 503 for _, s, _ in results[outage:]), 30, "503s while Redis is down")
        assert all(httpx.get(r.base + "/ready").status_code == 503 for r in c.replicas)
        c.redis.start()
        back = len(results)
        wait_for(lambda: sum(s == 200 for _, s, _ in results[back:]) >= 6, 30, "answers after Redis returned")
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    by_tag: dict[str, list[tuple[int, bytes]]] = defaultdict(list)
    for tag, status, content in results:
        assert status in (200, 503), content
        if status == 503:
            assert json.loads(content)["error"]["code"] == "state_unavailable", content
        by_tag[tag].append((status, content))
    for tag, answers in by_tag.items():
        if [status for status, _ in answers] == [200, 200]:  # one episode answered both replicas
            assert answers[0][1] == answers[1][1] and len(c.upstream.sessions(tag)) == 1, tag
    assert all(r.ready() for r in c.replicas)
