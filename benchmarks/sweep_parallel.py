"""`optscale sweep` wall time with --jobs 1 vs --jobs N (loky) on the same grid, in one run: the speed-up.

A simulated pool (500 problems x 64 samples by default) is swept over OptScale's default
(s_min, alpha) grid at 4 budgets, as a user runs it (``python -m optscale sweep``, start-up and
pool reading included), serial and with --jobs alternately, ``--repeats`` times each, the fastest
of each kept. The two report folders must be identical, byte for byte. What the machine allows
at the time is printed too: the same measure for a loop that needs no data and no coordination
(``--jobs`` pure-Python loops in loky processes vs one after another), the ceiling of any
speed-up on a machine that other work keeps busy.

Usage: python benchmarks/sweep_parallel.py [--problems 500] [--orders 8] [--jobs 2] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from optscale.pools import PoolProblem, write_pool
from optscale.simulate import simulate_pool


def files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def spin(count: int) -> int:
    total = 0
    for i in range(count):
        total += i * i
    return total


def ceiling(jobs: int, count: int = 10_000_000) -> float:
    """Serial over parallel wall time of ``jobs`` equal CPU-bound loops (loky processes started first)."""
    from joblib import Parallel, delayed

    with Parallel(n_jobs=jobs, backend="loky") as parallel:
        parallel(delayed(spin)(1) for _ in range(jobs))  # start the workers
        start = time.perf_counter()
        for _ in range(jobs):
            spin(count)
        serial = time.perf_counter() - start
        start = time.perf_counter()
        parallel(delayed(spin)(count) for _ in range(jobs))
        return serial / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--problems", type=int, default=500)
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--orders", type=int, default=8)
    ap.add_argument("--budgets", default="8,16,32,64")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        pool = Path(tmp) / "pool.jsonl"
        write_pool(pool, [p if isinstance(p, PoolProblem) else PoolProblem.model_validate(p)
                          for p in simulate_pool(args.problems, args.samples, seed=0)])
        best: dict[int, float] = {}
        cpu: dict[int, float] = {}
        for _ in range(args.repeats):
            for jobs in (1, args.jobs):  # alternated, so that other work on the machine weighs on both alike
                cmd = [sys.executable, "-m", "optscale", "sweep", str(pool), "--n-max", args.budgets,
                       "--orders", str(args.orders), "--out", f"{tmp}/jobs{jobs}", "--jobs", str(jobs)]
                start, used = time.perf_counter(), _children_cpu()
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                best[jobs] = min(best.get(jobs, float("inf")), time.perf_counter() - start)
                cpu[jobs] = min(cpu.get(jobs, float("inf")), _children_cpu() - used)
        same = files(Path(tmp) / "jobs1") == files(Path(tmp) / f"jobs{args.jobs}")
    limit = ceiling(args.jobs)
    print(f"sweep of {args.problems} problems x {args.samples} samples x {args.orders} orders, default grid, "
          f"budgets {args.budgets}; {os.cpu_count()} CPUs; fastest of {args.repeats}")
    print(f"--jobs 1: {best[1]:.1f} s; --jobs {args.jobs} (loky): {best[args.jobs]:.1f} s; "
          f"speed-up {best[1] / best[args.jobs]:.2f}x; outputs identical: {same}")
    print(f"CPU time (user + system, the command and its workers): {cpu[1]:.1f} s vs {cpu[args.jobs]:.1f} s")
    print(f"ceiling now (CPU-bound loops, {args.jobs} loky processes vs serial): {limit:.2f}x")
    if not same:
        sys.exit("the parallel sweep's files differ from the serial sweep's")


if __name__ == "__main__":
    main()
