"""Replay of 500 problems x 64 samples x 20 orders over a 48-point (s_min, alpha) grid and
4 budgets, for OptScale^0 and OptScale^t: wall time (target under 30 s on 2 cores). Then every
other registered policy at its default settings against optscale0's, same budgets (target:
within 2x of optscale0; policies that need extra input, such as learned's table, are skipped).

Every grid point is a full replay with statistics (accuracy, bootstrap interval, tokens,
BoN-curve comparison). Usage: python benchmarks/bench_replay.py [--problems 500] [--orders 20]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from optscale.cli.offline import DEFAULT_ALPHA, DEFAULT_S_MIN
from optscale.policies import ConstantPriors, make_policy
from optscale.pools import PoolProblem
from optscale.replay import bon_curve, build_batch, evaluate
from optscale.simulate import simulate_pool


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--problems", type=int, default=500)
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--orders", type=int, default=20)
    args = ap.parse_args()
    s_mins = [float(x) for x in DEFAULT_S_MIN.split(",")]
    alphas = [float(x) for x in DEFAULT_ALPHA.split(",")]
    budgets = (8, 16, 32, 64)
    pool = [p if isinstance(p, PoolProblem) else PoolProblem.model_validate(p)
            for p in simulate_pool(args.problems, args.samples, seed=0)]
    t0 = time.perf_counter()
    batch = build_batch(pool, orders=args.orders, seed=0)
    curve = bon_curve(batch)
    t_batch = time.perf_counter() - t0
    priors = ConstantPriors(1.0, 0.1, 0.1, 0.1)
    total = t_batch
    for name, extra in (("optscale0", {}), ("optscale-t", {"priors": priors})):
        t0 = time.perf_counter()
        for b in budgets:
            for s in s_mins:
                for a in alphas:
                    pol = make_policy(name, b, s_min=s, alpha=a, **extra)
                    evaluate(batch, pol.replay(batch), pol, curve)
        dt = time.perf_counter() - t0
        total += dt
        print(f"{name}: {len(budgets) * len(s_mins) * len(alphas)} replays of {args.problems} problems x "
              f"{args.orders} orders in {dt:.1f} s")
    print(f"batch layout and BoN curve: {t_batch:.1f} s; total wall time {total:.1f} s (target < 30 s)")
    t0 = time.perf_counter()
    for b in budgets:
        for s in s_mins:
            for a in alphas:
                pol = make_policy("optscale", b, s_min=s, alpha=a)
                evaluate(batch, pol.replay(batch), pol, curve)
    print(f"(not in the target) sequential optscale, same grid: {time.perf_counter() - t0:.1f} s "
          f"(refits after every sample: {args.samples - 2} prefix fits per row, cached across the grid)")
    print(f"rows per replay: {np.prod(batch.shape[:2]):,}")
    from optscale.errors import InputError
    from optscale.policies import POLICIES

    def timed(name: str, **extra) -> float:
        """Best of 3 (the machine is shared) of the policy's own work over the budgets, no cached fits."""
        best = float("inf")
        for _ in range(3):
            total = 0.0
            for b in budgets:
                batch.cache.clear()
                pol = make_policy(name, b, **extra)
                t0 = time.perf_counter()
                pol.replay(batch)
                total += time.perf_counter() - t0
            best = min(best, total)
        return best

    base = timed("optscale0")
    print(f"replay alone at default settings, {len(budgets)} budgets each: optscale0 {base:.2f} s")
    for name in POLICIES.names():
        if name == "optscale":
            continue  # the sequential rule, timed above (not in the target)
        extra = {"priors": priors} if name == "optscale-t" else {}
        try:
            dt = timed(name, **extra)
        except InputError as exc:
            print(f"  {name}: skipped ({exc})")
            continue
        print(f"  {name}: {dt:.2f} s = {dt / base:.2f}x optscale0 (target <= 2x)")


if __name__ == "__main__":
    main()
