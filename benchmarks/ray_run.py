"""``optscale run --engine ray`` vs a single process, against the fake server (its own process).

Measured in one run, same seed, same problems, same per-process settings, printed with ratios:

1. start-up: from the call to the first problem handed out (``Listener.on_start``), for a
   local run (server checks), a Ray run that starts its own local Ray (``ray.init`` + actors),
   and a Ray run joining a Ray already up (actors only);
2. overhead per problem: the sampling time (``on_start`` to the end) of a Ray run with 1 actor
   minus the local run's, over the problems (the relay, Ray's object transfer and the driver's
   writes; concurrency per process is the same, so neither has more requests under way);
3. the sampling time with 2 actors (each with the same concurrency as the single process).

Every run must finish every problem with the full budget (checked here). The fake server of
this benchmark does not honour seeds; tests/test_live_ray.py checks that answers agree.

Usage: python benchmarks/ray_run.py [--problems 32] [--n-max 8] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from live_fake import FakeProcess  # noqa: E402
from live_fakes import MODEL, fake_gold  # noqa: E402

from optscale.live.config import build_config  # noqa: E402
from optscale.live.runner import run_live  # noqa: E402
from optscale.live.sampler import Listener  # noqa: E402


class Clock(Listener):
    def on_start(self, problems: int) -> None:
        self.started = time.perf_counter()


def timed(values: dict) -> tuple[float, float, list[dict]]:
    """(start-up s, sampling s, problems.jsonl without timings) of one fresh run."""
    clock = Clock()
    t0 = time.perf_counter()
    outcome = asyncio.run(run_live(build_config({}, values), clock))
    end = time.perf_counter()
    assert not outcome.unfinished, outcome.unfinished[0].error
    rows = sorted((json.loads(x) for x in (Path(values["out"]) / "problems.jsonl").read_text().splitlines()),
                  key=lambda p: p["id"])
    return clock.started - t0, end - clock.started, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=32)
    parser.add_argument("--n-max", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--token-latency", type=float, default=0.002)
    args = parser.parse_args()
    import ray

    with FakeProcess(args.token_latency, 16, 48) as base_url, tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "problems.jsonl"
        data.write_text("".join(json.dumps({"id": f"b{i}", "question": (q := f"Problem b{i}: count the ducks."),
                                            "answer": fake_gold(q)}) + "\n" for i in range(args.problems)))
        runs = iter(range(100))

        def values(**extra) -> dict:
            return {"dataset": str(data), "base_url": [base_url], "model": MODEL, "scorer": "confidence",
                    "policy": "bon", "n_max": args.n_max, "seed": 11, "concurrency": args.concurrency,
                    "out": f"{tmp}/run{next(runs)}", **extra}

        timed(values())  # warm-up: imports, the grader's worker, the server's first connections
        local = timed(values())
        cold = timed(values(engine="ray", actors=2))  # starts (and shuts down) its own local Ray
        ray.init(num_cpus=max(2, os.cpu_count() or 1), include_dashboard=False, logging_level=logging.WARNING)
        try:
            one = timed(values(engine="ray", actors=1))
            two = timed(values(engine="ray", actors=2))
        finally:
            ray.shutdown()
        again = timed(values())
    for r in (local, cold, one, two, again):
        assert [(p["id"], p["n_samples"]) for p in r[2]] == [(p["id"], args.n_max) for p in local[2]]
    base = (local[1] + again[1]) / 2
    p = args.problems
    print(f"{p} problems x {args.n_max} samples (bon, seed), concurrency {args.concurrency} per process, "
          f"{os.cpu_count()} CPUs")
    print(f"{'run':34} {'start-up s':>10} {'sampling s':>11}")
    for name, r in [("local", local), ("ray, own local Ray, 2 actors", cold), ("ray, Ray up, 1 actor", one),
                    ("ray, Ray up, 2 actors", two), ("local again", again)]:
        print(f"{name:34} {r[0]:10.2f} {r[1]:11.2f}")
    print(f"start-up over local: +{cold[0] - local[0]:.2f} s starting a local Ray, +{one[0] - local[0]:.2f} s "
          "joining a running one")
    print(f"overhead per problem (1 actor vs local): {1000 * (one[1] - base) / p:.1f} ms "
          f"(sampling time ratio {one[1] / base:.2f})")
    print(f"2 actors vs local sampling time: {two[1] / base:.2f}")


if __name__ == "__main__":
    main()
