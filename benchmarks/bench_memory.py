"""Peak memory of ``optscale replay`` and ``optscale sweep`` against the size of the pool file.

Target (issue 10): at most ~5x the pool file. A pool of 9,500 problems x 64 samples (about
50 MB, written by ``optscale simulate``) used to peak at about 1.0 GB (20x). Each command runs
in a fresh subprocess; its peak resident set size is ``resource.getrusage(RUSAGE_CHILDREN)
.ru_maxrss`` (kilobytes on Linux) of that child. Also printed: the bare interpreter with the
package imported, which every command pays whatever the pool.

Usage: python benchmarks/bench_memory.py [--problems 9500] [--samples 64] [--pool PATH]
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

CLI = [sys.executable, "-c", "from optscale.cli import main; main()"]


def peak_of(args: list[str]) -> tuple[float, float]:
    """Peak RSS (MB) and wall seconds of one child process running ``args``."""
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the child: run the command and report nothing but its exit status
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
        os.execv(args[0], args)
    _, status, usage = os.wait4(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(args)}")
    return usage.ru_maxrss / 1024, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--problems", type=int, default=9500)
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--pool", type=Path, help="an existing pool (default: simulate one)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        pool = args.pool or Path(tmp) / "pool.jsonl"
        if args.pool is None:
            subprocess.run([*CLI, "simulate", "--out", str(pool), "--problems", str(args.problems), "--samples",
                            str(args.samples)], check=True, stdout=subprocess.DEVNULL)
        size = pool.stat().st_size / 2**20
        print(f"pool {pool.name}: {size:.1f} MB")
        runs = {
            "python -c 'import optscale.cli' (floor)": [sys.executable, "-c", "import optscale.cli, numpy, scipy"],
            "replay optscale0 --n-max 64 --orders 10": [*CLI, "replay", str(pool), "--policy", "optscale0", "--n-max",
                                                       "64", "--json"],
            "sweep optscale0 --n-max 16,64, 2x2 grid": [*CLI, "sweep", str(pool), "--n-max", "16,64", "--s-min",
                                                        "0.9,0.95", "--alpha", "0.5,0.9", "--out", f"{tmp}/sweep"],
        }
        for name, cmd in runs.items():
            peak, wall = peak_of(cmd)
            print(f"{name}: peak {peak:,.0f} MB = {peak / size:.1f}x the pool file ({wall:.0f} s)")
    print(f"(ru_maxrss of this process's children so far: {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024:,.0f} MB)")


if __name__ == "__main__":
    main()
