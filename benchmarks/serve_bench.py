"""``optscale serve`` under measurement: added latency, load, and a disconnect storm.

The fake OpenAI-compatible upstream (tests/live_fakes.py) and the proxy (``optscale serve``)
each run in their own process, as in a deployment; clients are httpx in this process.

1. latency: N = 1 (``bon``, n_max 1), a fast upstream; the same streamed request sent to the
   upstream directly (the library's own client) and through the proxy, one at a time: p50/p99 of
   both and the difference (target: p50 added <= 5 ms on 2 cores); also the time the proxy spends
   outside its episode, and direct requests sent back to back on one connection, as the proxy
   sends them (the fake upstream then answers about 40 ms later: a TCP delayed-ACK stall that
   alternating requests hide).
2. load: 200 concurrent clients x 5 requests each, ``bon`` N_max 2 then ``optscale`` N_max 8,
   20-50 ms per sample (10-25 tokens at 2 ms); errors, throughput, p50/p99, the proxy's RSS before and after two
   identical rounds, upstream requests left in flight and connections to the upstream.
3. storm: 100 clients leave mid-episode; time until the proxy has no upstream request in flight.

Usage: python benchmarks/serve_bench.py [latency|load|storm|all] [--requests 300] [--clients 200]
[--per-client 5] [--storm-clients 100]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
MESSAGES = [{"role": "user", "content": "Problem b1: how many?"}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Upstream:
    def __init__(self, token_latency: float, min_tokens: int = 8, max_tokens: int = 24):
        self.proc = subprocess.Popen([PY, str(ROOT / "tests" / "live_fakes.py"), "--token-latency", str(token_latency),
                                      "--min-tokens", str(min_tokens), "--max-tokens", str(max_tokens)],
                                     stdout=subprocess.PIPE, text=True)
        self.url = self.proc.stdout.readline().strip()
        self.port = int(self.url.rsplit(":", 1)[1].split("/")[0])

    def close(self):
        self.proc.terminate()
        self.proc.wait(10)


class ProxyProcess:
    def __init__(self, upstream: str, *args: str):
        self.port = free_port()
        self.proc = subprocess.Popen([PY, "-m", "optscale", "-q", "serve", "--upstream", upstream, "--model",
                                      "fake-model", "--scorer", "confidence", "--port", str(self.port), *args])
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(self.url + "/ready").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the proxy did not get ready")
            time.sleep(0.05)

    def rss_mb(self) -> float:
        text = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+)", text).group(1)) / 1024

    def metric(self, name: str) -> float:
        text = httpx.get(self.url + "/metrics").text
        m = re.search(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M)
        return float(m.group(1)) if m else 0.0

    def close(self):
        self.proc.terminate()
        self.proc.wait(10)


def connections_to(port: int) -> int:
    """Established TCP connections whose remote end is ``port`` (the proxy's pooled upstream connections)."""
    n = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        parts = line.split()
        if int(parts[2].split(":")[1], 16) == port and parts[3] == "01":
            n += 1
    return n


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def _latency(upstream: str, proxy: str, requests: int) -> dict[str, list[float]]:
    """The same sample asked of the upstream directly and through the proxy, one at a time.

    The direct path is the library's own client (``OpenAIGenerator``, the one the proxy uses, with
    the proxy's generation settings and the logprobs its confidence scorer asks for), so the
    difference is what the proxy adds: one more HTTP hop, validation, the episode, scoring and the
    response, not a difference in how the upstream is asked.
    """
    from optscale.live.openai import OpenAIGenerator
    from optscale.live.types import Prompt
    from optscale.serve.settings import ServeConfig

    generation = ServeConfig.model_fields["generation"].default.model_copy(update={"logprobs": True})
    prompt = Prompt(messages=tuple(MESSAGES))
    async with OpenAIGenerator(upstream, "fake-model", generation) as gen, httpx.AsyncClient(timeout=30) as c:
        async def direct():
            await gen.generate(prompt)

        episode: list[float] = []

        async def proxied():
            r = await c.post(proxy + "/v1/chat/completions", json={"model": "fake-model", "messages": MESSAGES})
            assert r.status_code == 200, r.text
            episode.append(1000 * r.json()["optscale"]["timings"]["total_s"])

        times: dict[str, list[float]] = {"direct": [], "proxy": [], "direct back-to-back": []}
        for i in range(requests + 30):
            for name, call in (("direct", direct), ("proxy", proxied)):
                t = time.perf_counter()
                await call()
                if i >= 30:
                    times[name].append((time.perf_counter() - t) * 1000)
        # The proxy asks the upstream back to back on a pooled connection; so does this loop.
        for i in range(requests):
            t = time.perf_counter()
            await direct()
            times["direct back-to-back"].append((time.perf_counter() - t) * 1000)
        times["outside the episode"] = [p - e for p, e in zip(times["proxy"], episode[30:])]
        return times


def latency(requests: int) -> None:
    up = Upstream(0.0)
    proxy = ProxyProcess(up.url, "--n-max", "1", "--policy", "bon")
    try:
        times = asyncio.run(_latency(up.url, proxy.url, requests))
        d, p = times["direct"], times["proxy"]
        print(f"latency over {requests} sequential requests (N=1, fast fake upstream):")
        print(f"  direct  p50 {pct(d, .5):.2f} ms  p99 {pct(d, .99):.2f} ms")
        print(f"  proxy   p50 {pct(p, .5):.2f} ms  p99 {pct(p, .99):.2f} ms")
        print(f"  added   p50 {pct(p, .5) - pct(d, .5):.2f} ms  p99 {pct(p, .99) - pct(d, .99):.2f} ms")
        for name in ("direct back-to-back", "outside the episode"):
            v = times[name]
            print(f"  {name}: p50 {pct(v, .5):.2f} ms  p99 {pct(v, .99):.2f} ms")
        b = times["direct back-to-back"]
        print(f"  added over back-to-back direct requests (how the proxy asks the upstream): "
              f"p50 {pct(p, .5) - pct(b, .5):.2f} ms  p99 {pct(p, .99) - pct(b, .99):.2f} ms")
    finally:
        proxy.close()
        up.close()


async def _round(url: str, clients: int, per_client: int, options: dict) -> tuple[int, list[float], float]:
    errors, times = 0, []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=120, limits=limits) as c:
        async def client():
            nonlocal errors
            for _ in range(per_client):
                t = time.perf_counter()
                try:
                    r = await c.post(url + "/v1/chat/completions",
                                     json={"model": "fake-model", "messages": MESSAGES, "optscale": options})
                    errors += r.status_code != 200
                except httpx.HTTPError:
                    errors += 1
                times.append(time.perf_counter() - t)

        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        return errors, times, time.perf_counter() - start


def load(clients: int = 200, per_client: int = 5) -> None:
    up = Upstream(0.002, 10, 25)  # 10-25 tokens at 2 ms: 20-50 ms per sample
    proxy = ProxyProcess(up.url, "--max-episodes", str(clients), "--max-in-flight", "512", "--in-flight", "8")
    try:
        for options in ({"policy": "bon", "n_max": 2}, {"policy": "optscale", "n_max": 8}):
            rss = [proxy.rss_mb()]
            for k in range(2):
                errors, times, wall = asyncio.run(_round(proxy.url, clients, per_client, options))
                rss.append(proxy.rss_mb())
                print(f"load {options} round {k + 1}: {clients} clients x {per_client}: errors {errors}, "
                      f"{len(times) / wall:.1f} req/s, p50 {pct(times, .5) * 1000:.0f} ms, "
                      f"p99 {pct(times, .99) * 1000:.0f} ms")
            print(f"  proxy RSS MB: before {rss[0]:.1f}, after round 1 {rss[1]:.1f}, after round 2 {rss[2]:.1f}; "
                  f"upstream requests in flight {proxy.metric('optscale_inflight_samples'):.0f}; "
                  f"connections to the upstream {connections_to(up.port)}")
    finally:
        proxy.close()
        up.close()


def storm(clients: int = 100) -> None:
    up = Upstream(0.01, 100, 200)  # 1-2 s per sample: every episode is mid-way when its client leaves
    proxy = ProxyProcess(up.url, "--max-episodes", str(clients), "--max-in-flight", "1024")

    async def leave():
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=clients)) as c:
            async def one():
                try:
                    await c.post(proxy.url + "/v1/chat/completions", timeout=0.5, json={
                        "model": "fake-model", "messages": MESSAGES, "optscale": {"policy": "bon", "n_max": 4}})
                except httpx.TimeoutException:
                    pass
            await asyncio.gather(*(one() for _ in range(clients)))

    try:
        asyncio.run(leave())
        peak = proxy.metric("optscale_inflight_samples")
        left = time.perf_counter()
        while proxy.metric("optscale_inflight_samples") > 0:
            time.sleep(0.01)
        drained = time.perf_counter() - left
        print(f"storm: {clients} clients left mid-episode; in flight when the last left: {peak:.0f}; "
              f"0 in flight after {drained * 1000:.0f} ms; "
              f"cancelled {proxy.metric('optscale_samples_cancelled_total'):.0f}")
    finally:
        proxy.close()
        up.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="Measure optscale serve: added latency, load, disconnect storm "
                                     "(bon N_max 2 and optscale N_max 8 under load; fake upstream 20-50 ms per "
                                     "sample).")
    parser.add_argument("what", nargs="?", default="all", choices=["latency", "load", "storm", "all"],
                        help="which measurement (default: all)")
    parser.add_argument("--requests", type=int, default=300, help="sequential requests of the latency run "
                        "(default: 300)")
    parser.add_argument("--clients", type=int, default=200, help="concurrent clients of the load run (default: 200)")
    parser.add_argument("--per-client", type=int, default=5, help="requests per client in the load run (default: 5)")
    parser.add_argument("--storm-clients", type=int, default=100, help="clients that leave mid-episode in the storm "
                        "(default: 100)")
    args = parser.parse_args()
    os.environ.setdefault("PYTHONPATH", str(ROOT / "src"))
    if args.what in ("latency", "all"):
        latency(args.requests)
    if args.what in ("load", "all"):
        load(args.clients, args.per_client)
    if args.what in ("storm", "all"):
        storm(args.storm_clients)


if __name__ == "__main__":
    main()
