"""Batched MLE for 10,000 problems of 3-20 scores vs scipy L-BFGS-B with numeric gradients.

The reference fits one problem at a time with scipy (bounded to the same box, one start from
the data's moments, as a typical implementation would). Both are timed in this run; the
ratio is per problem, and the log-likelihoods are compared problem by problem.
Usage: python benchmarks/bench_fit.py [--problems 10000] [--reference-problems 300]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import optimize

from optscale.fit import MU_BOUNDS, SIGMA_BOUNDS, fit_map, fit_mle
from optscale.stats import truncnorm


def reference(x, prior=None):
    def neg(theta):
        val = float(np.sum(truncnorm.logpdf(x, theta[0], theta[1])))
        if prior is not None:
            val += -0.5 * ((theta[0] - prior[0]) / 0.1) ** 2 - 0.5 * ((theta[1] - prior[1]) / 0.1) ** 2
        return -val

    x0 = [float(np.clip(x.mean(), *MU_BOUNDS)), float(np.clip(max(x.std(), 0.02), *SIGMA_BOUNDS))]
    return optimize.minimize(neg, x0, method="L-BFGS-B", bounds=[MU_BOUNDS, SIGMA_BOUNDS])


def problems(count, seed):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        n = int(rng.integers(3, 21))
        if i % 2:  # real-looking PRM scores: piled near 1 with a left tail
            out.append(np.clip(1 - rng.exponential(rng.uniform(0.005, 0.2), n), 0, 1))
        else:
            out.append(truncnorm.sample(rng.uniform(0.3, 1.2), rng.uniform(0.02, 0.4), n, rng=rng))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--problems", type=int, default=10_000)
    ap.add_argument("--reference-problems", type=int, default=300)
    args = ap.parse_args()
    data = problems(args.problems, 0)
    prior_mu, prior_sigma = np.full(args.problems, 0.9), np.full(args.problems, 0.1)
    for name, run, ref_prior in (("MLE", lambda d: fit_mle(d), None),
                                 ("MAP", lambda d: fit_map(d, prior_mu[: len(d)], prior_sigma[: len(d)], 0.1), (0.9, 0.1))):
        t0 = time.perf_counter()
        res = run(data)
        t_fast = (time.perf_counter() - t0) / args.problems
        k = args.reference_problems
        t0 = time.perf_counter()
        refs = [reference(x, ref_prior) for x in data[:k]]
        t_ref = (time.perf_counter() - t0) / k
        ours = res.loglik[:k]
        if ref_prior is not None:
            ours = ours - 0.5 * ((res.mu[:k] - 0.9) / 0.1) ** 2 - 0.5 * ((res.sigma[:k] - 0.1) / 0.1) ** 2
        theirs = np.array([-r.fun for r in refs])
        diff = ours - theirs
        print(f"{name}: batched {args.problems:,} problems in {t_fast * args.problems:.2f} s "
              f"({t_fast * 1e6:.0f} us/problem); scipy {t_ref * 1e3:.1f} ms/problem; "
              f"speed-up {t_ref / t_fast:,.0f}x (target >= 20x)")
        print(f"     objective vs scipy on {k} problems: ours >= scipy - 1e-6 on {(diff >= -1e-6).mean():.1%}, "
              f"strictly better (> 1e-6) on {(diff > 1e-6).mean():.1%}, worst {diff.min():+.2e}, "
              f"converged {res.converged.mean():.1%}, NaN {int(np.isnan(res.mu).sum())}")


if __name__ == "__main__":
    main()
