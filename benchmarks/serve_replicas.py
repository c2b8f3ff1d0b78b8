"""``optscale serve`` scaled out: 1 vs 2 proxy replicas behind HAProxy, in one run.

A fast fake upstream (tests/live_fakes.py, its own process), one ``redis-server`` and two
``optscale serve --state redis://...`` replicas (each its own process) run on 127.0.0.1; HAProxy
(leastconn, health checks on ``/ready``, a new connection to a replica per request, as deploy/haproxy.cfg) is started twice: in front of
replica 1 only, then in front of both. Each round: ``--clients`` concurrent clients (httpx, this
process) send ``--per-client`` requests each (``bon``, n_max 2; half of them with an
``Idempotency-Key``, so Redis is on the path). Printed per round: requests/s, p50/p99 latency and
errors (anything but a 200). Needs ``redis-server`` and ``haproxy`` on the PATH (Debian packages).

On a small machine every process shares the same cores (the clients too): the ratio between the
rounds is what the replicas add there, not what they add on machines of their own.

Usage: python benchmarks/serve_replicas.py [--clients 500] [--per-client 4] [--warmup 1]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_bench import MESSAGES, ProxyProcess, Upstream, free_port, pct  # noqa: E402

HAPROXY_CFG = """
global
    maxconn 8192
defaults
    mode http
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout check 10s
    retries 3
    option redispatch
    option http-buffer-request
    retry-on conn-failure empty-response 503
frontend proxy
    bind 127.0.0.1:{port}
    default_backend replicas
backend replicas
    balance leastconn
    http-reuse never
    option httpchk GET /ready
    http-check expect status 200
    default-server check inter 2s fall 5 rise 1 maxconn 4096
{servers}
"""


def haproxy(replicas: list[ProxyProcess], folder: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cfg = folder / f"haproxy-{len(replicas)}.cfg"
    cfg.write_text(HAPROXY_CFG.format(port=port, servers="\n".join(
        f"    server r{i} 127.0.0.1:{r.port}" for i, r in enumerate(replicas))))
    log = open(folder / f"haproxy-{len(replicas)}.log", "w")  # noqa: SIM115 -- the process's, for the round
    proc = subprocess.Popen(["haproxy", "-db", "-f", str(cfg)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(url + "/ready").status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("haproxy did not get ready")
        time.sleep(0.05)


async def _round(url: str, clients: int, per_client: int) -> tuple[Counter, list[float], float]:
    errors: Counter = Counter()  # what each failed request got: its status, or the client's exception
    times: list[float] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    body = {"model": "fake-model", "messages": MESSAGES, "optscale": {"policy": "bon", "n_max": 2}}
    async with httpx.AsyncClient(timeout=300, limits=limits) as c:
        async def client(k: int) -> None:
            for i in range(per_client):
                headers = {"Idempotency-Key": uuid.uuid4().hex} if (k + i) % 2 else {}
                t = time.perf_counter()
                try:
                    r = await c.post(url + "/v1/chat/completions", json=body, headers=headers)
                    if r.status_code != 200:
                        errors[str(r.status_code)] += 1
                except httpx.HTTPError as exc:
                    errors[type(exc).__name__] += 1
                times.append(time.perf_counter() - t)

        start = time.perf_counter()
        await asyncio.gather(*(client(k) for k in range(clients)))
        return errors, times, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--per-client", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1, help="requests per client before measuring each round")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs; clients, HAProxy, Redis, the replicas and the upstream share them")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        redis_port = free_port()
        redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                                  "--appendonly", "no", "--dir", tmp], stdout=subprocess.DEVNULL)
        up = Upstream(0.0)
        replicas: list[ProxyProcess] = []
        try:
            flags = ["--state", f"redis://127.0.0.1:{redis_port}/0", "--max-episodes", str(2 * args.clients),
                     "--max-in-flight", "1024", "--in-flight", "8"]
            replicas = [ProxyProcess(up.url, *flags) for _ in range(2)]
            for n in (1, 2):
                proc, url = haproxy(replicas[:n], folder)
                try:
                    asyncio.run(_round(url, args.clients, args.warmup))
                    errors, times, wall = asyncio.run(_round(url, args.clients, args.per_client))
                finally:
                    proc.terminate()
                    proc.wait(10)
                downs = (folder / f"haproxy-{n}.log").read_text().count(" is DOWN")
                print(f"{n} replica(s): {args.clients} clients x {args.per_client}: {len(times) / wall:.1f} req/s, "
                      f"p50 {pct(times, .5) * 1000:.0f} ms, p99 {pct(times, .99) * 1000:.0f} ms, "
                      f"errors {sum(errors.values())} {dict(errors) or '(none)'}; a replica marked down {downs} time(s)")
        finally:
            for r in replicas:
                r.close()
            up.close()
            redis.terminate()
            redis.wait(10)


if __name__ == "__main__":
    main()
