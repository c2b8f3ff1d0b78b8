"""N* for 1,000,000 problems: the exact closed form vs the authors' grid-and-loop method.

The reference re-implements the original research code: a 1000-point grid of the max-of-N
density, a cumulative sum, a quantile by searchsorted, and a loop N = 1..N_max per problem.
Both are timed in this run; the ratio is per problem. Also reports how often the grid method
disagrees with the exact answer. Usage: python benchmarks/bench_nstar.py [--problems 1000000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy.stats import norm

from optscale import min_samples

X = np.linspace(0, 1, 1000)


def grid_reference(mu, sigma, s_min, alpha, n_max):
    a, b = -mu / sigma, (1 - mu) / sigma
    z = norm.cdf(b) - norm.cdf(a)
    pdf = norm.pdf(X, mu, sigma) / z
    cdf = (norm.cdf((X - mu) / sigma) - norm.cdf(a)) / z
    percentile = 1 - alpha  # the authors' "percentile" of the max-of-N distribution
    for n in range(1, n_max + 1):
        dens = pdf if n == 1 else n * pdf * np.power(cdf, n - 1)
        c = np.cumsum(dens) * (X[1] - X[0])
        c = c / c[-1]
        idx = np.searchsorted(c, percentile)
        score = X[-1] if idx >= len(X) else X[idx]
        if score >= s_min:
            return n
    return n_max


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--problems", type=int, default=1_000_000)
    ap.add_argument("--reference-problems", type=int, default=300)
    ap.add_argument("--n-max", type=int, default=64)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    mu = rng.uniform(0.5, 1.2, args.problems)
    sigma = rng.uniform(0.01, 0.3, args.problems)
    s_min, alpha = 0.95, 0.9

    t0 = time.perf_counter()
    fast = min_samples(mu, sigma, s_min, alpha, args.n_max)
    t_fast = (time.perf_counter() - t0) / args.problems

    k = args.reference_problems
    t0 = time.perf_counter()
    ref = np.array([grid_reference(mu[i], sigma[i], s_min, alpha, args.n_max) for i in range(k)])
    t_ref = (time.perf_counter() - t0) / k
    disagree = ref != fast[:k]
    print(f"exact closed form: {args.problems:,} problems in {t_fast * args.problems:.3f} s ({t_fast * 1e9:.0f} ns/problem)")
    print(f"grid reference:    {k} problems in {t_ref * k:.3f} s ({t_ref * 1e6:.0f} us/problem)")
    print(f"speed-up per problem: {t_ref / t_fast:,.0f}x (target >= 1000x)")
    print(f"grid method differs from the exact N* on {disagree.mean():.1%} of problems "
          f"(off by one: {(np.abs(ref - fast[:k]) == 1)[disagree].mean() if disagree.any() else 0:.0%} of those)")


if __name__ == "__main__":
    main()
