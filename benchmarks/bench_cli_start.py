"""How fast ``optscale --help`` starts, against importing the libraries any CLI of ours needs.

Prints the median wall time of each (fresh subprocesses, several runs) and their ratio; the
target is a ratio of at most 3 (``optscale --help`` must not import scipy.stats, sympy,
matplotlib, torch or the predictor: ``tests/test_layers.py`` checks that part).

    python benchmarks/bench_cli_start.py [--runs 15]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

BASE = [sys.executable, "-c", "import typer, rich, pydantic, numpy"]
HELP = [sys.executable, "-c", "import sys; sys.argv = ['optscale', '--help']; from optscale.cli import main; main()"]


def median_seconds(command: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="runs of each command (after one warm-up)")
    args = parser.parse_args()
    for command in (BASE, HELP):  # warm the file cache
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    base = median_seconds(BASE, args.runs)
    cli = median_seconds(HELP, args.runs)
    print(f"import typer, rich, pydantic, numpy: {base:.3f} s (median of {args.runs})")
    print(f"optscale --help:                     {cli:.3f} s (median of {args.runs})")
    print(f"ratio: {cli / base:.2f}x (target <= 3x)")


if __name__ == "__main__":
    main()
