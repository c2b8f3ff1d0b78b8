"""Peak memory of ``optscale replay`` and ``optscale sweep`` against the size of the pool file.

Target (issue 14): the peak above the imports is at most 1.5x the pool file, and a 2 GB pool
replays within 4 GB. "Above the imports" is measured in the same run: each command also runs on
a tiny pool (20 problems), whose peak is what the interpreter, the libraries and the command's
own modules cost whatever the pool; the ratio printed is (peak - tiny peak) / file size.

The default pool is 9,500 problems x 64 samples written by ``optscale simulate`` (about 50 MB;
it used to peak at 1.0 GB before issue 10 and 365 MB before issue 14). ``--big-gb 2`` adds a
pool of about 2 GB: the same problems, each sample carrying a response text (which replay never
reads) long enough to reach the size; it is generated in a temporary folder under /tmp and
deleted afterwards, and only ``replay`` runs on it (its peak is also printed in GB: 1.5x the file
above the imports keeps it within 4 GB). Each command runs in a fresh subprocess;
its peak resident set size is the child's ``ru_maxrss`` (kilobytes on Linux).

Usage: python benchmarks/bench_memory.py [--problems 9500] [--samples 64] [--pool PATH] [--big-gb 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLI = [sys.executable, "-c", "from optscale.cli import main; main()"]
MB = 2**20
TARGET = 1.5


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


def simulate(out: Path, problems: int, samples: int) -> Path:
    subprocess.run([*CLI, "simulate", "--out", str(out), "--problems", str(problems), "--samples", str(samples)],
                   check=True, stdout=subprocess.DEVNULL)
    return out


def with_texts(src: Path, dst: Path, size: float) -> Path:
    """``src`` with a response text on every sample, long enough to make ``dst`` about ``size`` bytes."""
    samples = sum(len(json.loads(line)["samples"]) for line in src.open(encoding="utf-8"))
    per_sample = max(0, int((size - src.stat().st_size) / samples) - len(', "text": ""'))
    filler = "Let x be the number sought; then 2x + 3 = 11, so x = 4. Check: 2 * 4 + 3 = 11. "
    text = (filler * (per_sample // len(filler) + 1))[:per_sample]
    with src.open(encoding="utf-8") as lines, dst.open("w", encoding="utf-8") as out:
        for line in lines:
            row = json.loads(line)
            for sample in row["samples"]:
                sample["text"] = text
            out.write(json.dumps(row) + "\n")
    return dst


def commands(pool: Path, out: str) -> dict[str, list[str]]:
    return {
        "replay optscale0 --n-max 64 --orders 10": [*CLI, "replay", str(pool), "--policy", "optscale0", "--n-max",
                                                   "64", "--json"],
        "sweep optscale0 --n-max 16,64, 2x2 grid": [*CLI, "sweep", str(pool), "--n-max", "16,64", "--s-min",
                                                    "0.9,0.95", "--alpha", "0.5,0.9", "--out", out],
    }


def report(pool: Path, floors: dict[str, float], tmp: str, only: tuple[str, ...] = ()) -> dict[str, float]:
    """Run each command on ``pool`` and print its peak against the file size; the ratios."""
    size = pool.stat().st_size / MB
    print(f"pool {pool.name}: {size:,.1f} MB")
    ratios = {}
    for name, cmd in commands(pool, f"{tmp}/sweep").items():
        if only and not name.startswith(only):
            continue
        peak, wall = peak_of(cmd)
        ratios[name] = ratio = (peak - floors[name]) / size
        print(f"  {name}: peak {peak:,.0f} MB ({peak / 1024:.2f} GB), {peak - floors[name]:,.0f} MB above the "
              f"imports = {ratio:.2f}x the pool file (target <= {TARGET}x) ({wall:.0f} s)")
    return ratios


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--problems", type=int, default=9500)
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--pool", type=Path, help="an existing pool (default: simulate one)")
    ap.add_argument("--big-gb", type=float, help="also replay a pool of this many GB (texts added), made in /tmp")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        tiny = simulate(Path(tmp) / "tiny.jsonl", 20, args.samples)
        floors = {name: peak_of(cmd)[0] for name, cmd in commands(tiny, f"{tmp}/tiny-sweep").items()}
        print("the imports (each command on a tiny pool of 20 problems): "
              + ", ".join(f"{name.split()[0]} {peak:,.0f} MB" for name, peak in floors.items()))
        pool = args.pool or simulate(Path(tmp) / "pool.jsonl", args.problems, args.samples)
        ratios = list(report(pool, floors, tmp).values())
        if args.big_gb:
            big = with_texts(pool, Path(tmp) / "big.jsonl", args.big_gb * 1e9)
            if pool != args.pool:
                pool.unlink()
            ratios += report(big, floors, tmp, only=("replay",)).values()
            big.unlink()
    print("target met" if max(ratios) <= TARGET else "target NOT met")


if __name__ == "__main__":
    main()
