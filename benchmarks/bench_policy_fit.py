"""Speed of ``optscale policy fit``: 10,000 problems x 64 samples (target: under 30 s on 2 cores).

Times the library fit (:func:`optscale.policies.learned.fit_table`, budget 0.5 so lambda is
bisected) for each selection rule on a simulated calibration pool laid out in ORDERS orders,
and, with ``--cli``, the whole command on a pool file (reading and validating the JSON Lines
pool included). Usage: python benchmarks/bench_policy_fit.py [--problems 10000] [--orders 4] [--cli]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from optscale.policies.base import ReplayBatch
from optscale.policies.learned import fit_table
from optscale.replay.batch import order_indices
from optscale.simulate import simulate_arrays


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", type=int, default=10_000)
    ap.add_argument("--orders", type=int, default=4)
    ap.add_argument("--cli", action="store_true", help="also time the CLI on a written pool file")
    args = ap.parse_args()
    sim = simulate_arrays(args.problems, 64, 0)
    p, n = sim.scores.shape
    idx = order_indices(np.full(p, n), n, args.orders, 1)
    take = lambda a: np.take_along_axis(a[:, None, :].repeat(args.orders, 1), idx, axis=2)  # noqa: E731
    batch = ReplayBatch(score=take(sim.scores), answer=take(sim.answer), tokens=take(sim.tokens.astype(float)),
                        correct=take(sim.correct), available=np.full(p, n), ids=tuple(map(str, range(p))),
                        questions=(None,) * p)
    for rule in ("best", "majority", "weighted"):
        t0 = time.perf_counter()
        table = fit_table(batch, 64, rule, budget=0.5)
        print(f"fit_table {p} x 64 x {args.orders} orders, select={rule}: {time.perf_counter() - t0:.1f} s "
              f"(lambda {table.lam:.3g}, in-sample accuracy {table.fitted['accuracy']:.4f}, "
              f"{100 * table.fitted['share_of_bon']:.0f}% of BoN@64 tokens)")
    if args.cli:
        from optscale.pools import write_pool
        from optscale.simulate import simulate_pool

        with tempfile.TemporaryDirectory() as tmp:
            pool = Path(tmp) / "calib.jsonl"
            write_pool(pool, simulate_pool(args.problems, 64, 0))
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "optscale", "policy", "fit", str(pool), "--n-max", "64",
                            "--budget", "0.5", "--orders", str(args.orders), "--out", str(Path(tmp) / "t.json")],
                           check=True)
            print(f"optscale policy fit (read + fit + write), {p} x 64 x {args.orders} orders: "
                  f"{time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
