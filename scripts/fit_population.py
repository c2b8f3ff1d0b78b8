"""Fit the population that ``optscale simulate`` draws problems from (``src/optscale/data/population.json``).

Run from the repository root (about three minutes on two cores)::

    .venv/bin/python scripts/fit_population.py \\
        --moments /work/shared/data/score-moments/math_train.jsonl \\
        --curves /work/shared/data/official/results/bon_curves.csv

(``--table`` defaults to ``results_table.csv`` next to ``--curves``.) Needs numpy, scipy and
optscale itself (the project's own dependencies); the Gaussian mixtures are fitted by the
small EM below, so scikit-learn is not needed. Every random draw comes from ``--seed``, so a
rerun on the same inputs writes the same numbers (only the date in the provenance changes). The raw data stay outside the repository; the JSON keeps a few KB of
fitted constants and the inputs' SHA-256.

Steps:

1. Read each problem's real PRM score mean and std and convert them to truncated-normal
   ``(mu, sigma)`` with :func:`optscale.fit.moments_to_params`. Most real problems pile their
   scores against 1 with a long left tail, a std larger than any truncated normal with that
   mean can have; the projection then stops at the box bound ``mu = MU_BOUNDS[1]`` (flag
   ``mu_at_bound``). They are kept, as a point mass at the bound (that is what every optscale
   estimator returns for such scores), and their moment mismatch is printed.
2. Fit the joint law of ``(level, mu, log sigma)``: level frequencies; ``P(at bound | level)``;
   a 1-D Gaussian mixture of ``log sigma`` at the bound and a 2-D Gaussian mixture of
   ``(mu, log sigma)`` inside, both with shared components and level-dependent weights. The
   numbers of components are chosen by BIC.
3. Calibrate the correctness model of :mod:`optscale.simulate` (``intercept``,
   ``difficulty_spread``, ``discrimination``, ``discrimination_sd``) by weighted least squares
   against the official MATH500 Best-of-N accuracy at N = 1, 2, 4, ..., 64 (``bon_curves.csv``)
   and Self-Consistency (majority vote) accuracy at N = 8..64 (``results_table.csv``): the
   model's Best-of-N accuracy is exact (quadrature over the best score's law), its majority
   vote a normal approximation, both averaged over problems drawn from the fitted population.
   Then ``tokens_loc`` is set so that mean tokens per sample equal the official ones (the slope
   of mean total tokens against N). The remaining constants are stated assumptions (``ASSUMED``).
4. Write the JSON and check it by simulating a pool with :func:`optscale.simulate.simulate_arrays`:
   printed are simulated against real moment quantiles, and simulated Best-of-N, majority vote
   and tokens against the official numbers.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import hashlib
import json
import math
import re
import sys
from pathlib import Path

import numpy as np
from scipy import optimize, special

from optscale import __version__
from optscale.fit import MU_BOUNDS, FitFlag, moments_to_params
from optscale.simulate import FORMAT, Population, latent_easiness, simulate_arrays
from optscale.stats import truncnorm

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "src" / "optscale" / "data" / "population.json"

#: Constants the official data cannot pin down, with the reason for each value.
ASSUMED = {
    # Corr(problem's logit mean score, its latent easiness): PRM means predict difficulty only
    # in part; the BoN curve hardly constrains it (it mostly trades off with difficulty_spread).
    "difficulty_corr": 0.6,
    # Four distinct wrong answers with Dirichlet(0.5) shares: usually one dominates, so majority
    # voting sometimes settles on a wrong answer, as it does on real hard problems.
    "wrong_answers": 4,
    "wrong_concentration": 0.5,
    # One wrong response in ten ends without an extractable answer (truncated or rambling).
    "no_answer_rate": 0.1,
    # Log length: +-1 sd of easiness changes length by ~1.4x; other problem effects by a log-sd
    # of 0.35; samples of one problem by a log-sd of 0.4 (long-CoT lengths vary a lot).
    "tokens_difficulty": 0.35,
    "tokens_problem_sd": 0.35,
    "tokens_sample_sd": 0.4,
    # Wrong responses of reasoning models are longer (they wander before giving up).
    "wrong_tokens_factor": 1.5,
}

CALIBRATED = ("intercept", "difficulty_spread", "discrimination", "discrimination_sd", "tokens_loc")
REPORT_N = (1, 2, 4, 8, 16, 32, 64)
#: Discriminations at which the calibration's chi-square is profiled.
PROFILE_GRID = tuple(np.geomspace(0.25, 32.0, 15).tolist())


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_moments(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Score mean, score std and level of every problem."""
    mean, std, level = [], [], []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                row = json.loads(line)
                mean.append(row["score_mean"])
                std.append(row["score_std"])
                level.append(row["level"])
    return np.array(mean, float), np.array(std, float), np.array(level, np.int64)


def read_votes(path: Path, dataset: str) -> tuple[np.ndarray, np.ndarray]:
    """N and Self-Consistency (majority vote) accuracy of one dataset from the official results table."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    pairs = []
    for row in rows:
        match = re.fullmatch(r"Self-Consistency \(\$N=(\d+)\$\)", row.get("Baseline") or "")
        if match:
            pairs.append((int(match[1]), float(row[f"{dataset} acc."]) / 100.0))
    if not pairs:
        sys.exit(f"{path}: no Self-Consistency rows for {dataset!r}")
    pairs.sort()
    return np.array([n for n, _ in pairs]), np.array([a for _, a in pairs])


def read_curve(path: Path, dataset: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """N, Best-of-N accuracy and mean total tokens of one dataset's official curve."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = [r for r in csv.DictReader(handle) if r["dataset"] == dataset]
    if not rows:
        sys.exit(f"{path}: no rows for dataset {dataset!r}")
    rows.sort(key=lambda r: int(r["n"]))
    return (
        np.array([int(r["n"]) for r in rows]),
        np.array([float(r["accuracy"]) for r in rows]),
        np.array([float(r["mean_tokens"]) for r in rows]),
    )


# ----------------------------------------------------------------------------- mixtures


def _log_gauss(x: np.ndarray, means: np.ndarray, covs: np.ndarray) -> np.ndarray:
    """``log N(x_i | means_k, covs_k)`` as an (n, k) array."""
    diff = x[:, None, :] - means[None, :, :]
    mahalanobis = np.einsum("nki,kij,nkj->nk", diff, np.linalg.inv(covs), diff)
    _, logdet = np.linalg.slogdet(covs)
    return -0.5 * (mahalanobis + logdet + x.shape[1] * math.log(2 * math.pi))


def fit_mixture(x, group, n_groups, k, rng, restarts=8, max_iter=2000, floor=1e-4):
    """EM for a Gaussian mixture with shared components and per-group weights.

    ``floor`` is added to every covariance diagonal so that no component collapses onto a
    single outlying problem. Returns ``(loglik, weights (groups, k), means, covs, bic)``.
    """
    n, d = x.shape
    member = np.eye(n_groups)[group]
    counts = member.sum(axis=0)
    best = None
    for _ in range(restarts):
        means = x[rng.choice(n, k, replace=False)]
        covs = np.repeat(np.cov(x.T).reshape(1, d, d), k, axis=0)
        weights = np.full((n_groups, k), 1.0 / k)
        previous = -np.inf
        for _ in range(max_iter):
            log_p = np.log(np.maximum(weights[group], 1e-300)) + _log_gauss(x, means, covs)
            log_row = special.logsumexp(log_p, axis=1)
            total = float(log_row.sum())
            resp = np.exp(log_p - log_row[:, None])
            mass = resp.sum(axis=0) + 1e-12
            weights = member.T @ resp / counts[:, None]
            means = resp.T @ x / mass[:, None]
            diff = x[:, None, :] - means[None]
            covs = np.einsum("nk,nki,nkj->kij", resp, diff, diff) / mass[:, None, None] + floor * np.eye(d)
            if total - previous <= 1e-7 * n:
                break
            previous = total
        if best is None or total > best[0]:
            best = (total, weights, means, covs)
    params = k * d + k * d * (d + 1) // 2 + n_groups * (k - 1)
    return (*best, -2.0 * best[0] + params * math.log(n))


def best_mixture(x, group, n_groups, ks, rng, label):
    """The BIC-best mixture over ``ks`` components, printing the BIC of each."""
    fits = {k: fit_mixture(x, group, n_groups, k, rng) for k in ks}
    print(f"  {label}: BIC " + "  ".join(f"K={k}:{fit[4]:.1f}" for k, fit in fits.items()))
    k = min(fits, key=lambda key: fits[key][4])
    print(f"  {label}: chose K={k}")
    return fits[k]


# ----------------------------------------------------------------------------- calibration


class BestOfNQuadrature:
    """Exact expected Best-of-N accuracy of given problems, for any correctness constants.

    The best of N scores has CDF ``F(s)**N``. Substituting ``u = F(s) = 1 - exp(-w)`` gives
    ``E[g(best)] = int_0^inf g(F^-1(u)) N u^(N-1) e^-w dw``, smooth for every N, integrated by
    Gauss-Legendre on w in [0, 18] (the mass beyond is below 1e-6 for N <= 64). The scores
    at the nodes are computed once; only the weights depend on N.
    """

    def __init__(self, mu, sigma, nodes=128, w_max=18.0):
        x, weight = np.polynomial.legendre.leggauss(nodes)
        self.w = 0.5 * w_max * (x + 1.0)
        self.dw = 0.5 * w_max * weight
        self.log_u = np.log(-np.expm1(-self.w))
        s = truncnorm.ppf(np.exp(self.log_u)[None, :], mu[:, None], sigma[:, None])
        mean, sd = truncnorm.mean_std(mu, sigma)
        self.z = (s - mean[:, None]) / sd[:, None]

    def weights(self, ns) -> np.ndarray:
        ns = np.asarray(ns, float)[:, None]
        out = self.dw * ns * np.exp((ns - 1.0) * self.log_u - self.w)
        mass = out.sum(axis=1)
        assert np.all(np.abs(mass - 1.0) < 1e-5), mass
        return out / mass[:, None]

    def accuracy(self, base, skill, ns) -> np.ndarray:
        """(problems, len(ns)): P(the best-scoring of N samples is correct)."""
        return special.expit(base[:, None] + skill[:, None] * self.z) @ self.weights(ns).T


def majority_accuracy(pass_rate, top_share, no_answer_rate, ns) -> np.ndarray:
    """(problems, len(ns)): P(the gold answer wins a vote of N samples), normal approximation.

    Only the most popular wrong answer competes: ``D = #gold - #top wrong`` sums N i.i.d.
    steps +1 (probability p), -1 (probability w) or 0, and the vote, ties broken at random,
    is won with probability about ``Phi(E[D] / sd[D])``. The check below simulates the exact vote.
    """
    w = (1.0 - pass_rate) * (1.0 - no_answer_rate) * top_share
    drift = (pass_rate - w)[:, None]
    var = (pass_rate + w - (pass_rate - w) ** 2)[:, None]
    return special.ndtr(np.sqrt(np.asarray(ns, float))[None, :] * drift / np.sqrt(np.maximum(var, 1e-300)))


class Calibration:
    """Weighted least squares of the model's Best-of-N and majority curves against official ones.

    Residuals are divided by the binomial standard error of an accuracy measured on
    ``eval_problems`` problems. ``theta`` is ``(intercept, log difficulty_spread, log
    discrimination, log discrimination_sd)``; the problems are drawn once (common random
    numbers), so the objective is smooth.
    """

    def __init__(self, pop, bon_n, bon_acc, vote_n, vote_acc, n_problems, eval_problems, seed):
        rng = np.random.default_rng(seed)
        _, mu, sigma = pop.draw_params(n_problems, rng)
        self.model = pop.model
        self.eta = latent_easiness(mu, sigma, rng.standard_normal(n_problems), pop.model)
        self.skill_noise = rng.standard_normal(n_problems)
        shares = rng.dirichlet(np.full(pop.model["wrong_answers"], pop.model["wrong_concentration"]), n_problems)
        self.top_share = shares.max(axis=1)
        self.quad = BestOfNQuadrature(mu, sigma)
        self.bon_n, self.vote_n = bon_n, vote_n
        self.target = np.concatenate([bon_acc, vote_acc])
        self.se = np.sqrt(self.target * (1.0 - self.target) / eval_problems)

    @staticmethod
    def constants(theta) -> dict[str, float]:
        intercept, *logs = theta
        return dict(zip(CALIBRATED[:4], [float(intercept), *np.exp(logs).tolist()]))

    def per_problem(self, theta, ns) -> np.ndarray:
        c = self.constants(theta)
        base = c["intercept"] + c["difficulty_spread"] * self.eta
        return self.quad.accuracy(base, c["discrimination"] + c["discrimination_sd"] * self.skill_noise, ns)

    def predict(self, theta) -> tuple[np.ndarray, np.ndarray]:
        bon = self.per_problem(theta, self.bon_n)
        vote = majority_accuracy(bon[:, 0], self.top_share, self.model["no_answer_rate"], self.vote_n)
        return bon.mean(axis=0), vote.mean(axis=0)

    def residuals(self, theta) -> np.ndarray:
        return (np.concatenate(self.predict(theta)) - self.target) / self.se

    def profile(self, log_discrimination, start):
        """Best ``theta`` with the discrimination held fixed, and its chi-square."""
        def fixed(t):
            return np.array([t[0], t[1], log_discrimination, t[2]])

        fit = optimize.least_squares(lambda t: self.residuals(fixed(t)), x0=[start[0], start[1], start[3]])
        return fixed(fit.x), float(np.sum(fit.fun**2))

    def run(self, grid=PROFILE_GRID) -> tuple[np.ndarray, float, float]:
        """Constants, their chi-square and the best chi-square.

        Only the logits' overall scale is poorly determined: chi-square keeps falling slowly
        as intercept, spread and discrimination grow together (towards a verifier that is a
        hard threshold). So the discrimination is profiled over ``grid`` (each fit starting
        from the previous one) and the smallest whose profile chi-square is within 1 of the
        best (the lower end of its 68% profile interval) is taken, refined by bisection: the
        least extreme verifier that the data cannot tell apart from the best fit.
        """
        start = np.array([5.0, math.log(3.0), 0.0, math.log(1.5)])
        fits = []
        for d in grid:
            start, chi2 = self.profile(math.log(d), start)
            fits.append((math.log(d), start, chi2))
        best = min(chi2 for _, _, chi2 in fits)
        k = next(i for i, (_, _, chi2) in enumerate(fits) if chi2 <= best + 1.0)
        if k == 0:
            return fits[0][1], fits[0][2], best
        low, (high, theta, chi2) = fits[k - 1][0], fits[k]
        while high - low > 0.01:
            mid = 0.5 * (low + high)
            trial, trial_chi2 = self.profile(mid, theta)
            if trial_chi2 <= best + 1.0:
                high, theta, chi2 = mid, trial, trial_chi2
            else:
                low = mid
        return theta, chi2, best


def tokens_loc_for(target_per_sample, eta, pass_rate, model) -> float:
    """``tokens_loc`` whose expected tokens per sample equal the target (lognormal means in closed form)."""
    spread = 0.5 * (model["tokens_problem_sd"] ** 2 + model["tokens_sample_sd"] ** 2)
    per_problem = np.exp(-model["tokens_difficulty"] * eta + spread) * (
        pass_rate + (1.0 - pass_rate) * model["wrong_tokens_factor"]
    )
    return math.log(target_per_sample) - math.log(per_problem.mean())


# ----------------------------------------------------------------------------- checks


def block_curves(sim, ns, rng):
    """Best-of-N and majority-vote accuracy, averaging over disjoint blocks of N samples."""
    best, vote = [], []
    p, s = sim.scores.shape
    codes = sim.answer.max() + 2  # -1 (none) .. k
    for n in ns:
        blocks = s // n
        sc = sim.scores[:, : blocks * n].reshape(p, blocks, n)
        ok = sim.correct[:, : blocks * n].reshape(p, blocks, n)
        top = np.argmax(sc, axis=2)
        best.append(np.take_along_axis(ok, top[..., None], axis=2).mean())
        ans = sim.answer[:, : blocks * n].reshape(p, blocks, n) + 1
        count = (ans[..., None] == np.arange(codes)).sum(axis=2).astype(float)
        count[..., 0] = 0.0  # no answer never wins
        count += 0.1 * rng.random(count.shape) * (count > 0)  # break ties at random
        vote.append((np.argmax(count, axis=2) == 1).mean())
    return np.array(best), np.array(vote)


def quantile_rows(label, values, qs):
    return f"  {label:<28}" + "".join(f"{v:9.4f}" for v in np.quantile(values, qs))


# ----------------------------------------------------------------------------- main


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--moments", type=Path, required=True, help="JSONL: score_mean, score_std, level per problem")
    parser.add_argument("--curves", type=Path, required=True, help="official bon_curves.csv")
    parser.add_argument("--table", type=Path, help="official results_table.csv (default: next to --curves)")
    parser.add_argument("--dataset", default="MATH500", help="curves to calibrate to (default MATH500)")
    parser.add_argument("--eval-problems", type=int, default=500, help="problems behind each official accuracy")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="population JSON to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--calibration-problems", type=int, default=20000)
    parser.add_argument("--check-problems", type=int, default=20000)
    args = parser.parse_args(argv)
    table = args.table or args.curves.with_name("results_table.csv")
    rng = np.random.default_rng(args.seed)

    mean, std, level = read_moments(args.moments)
    print(f"read {mean.size} problems from {args.moments}")
    fit = moments_to_params(mean, std)
    flags = {}
    for name in fit.flag_names():
        flags[name] = flags.get(name, 0) + 1
    print("moments_to_params flags: " + ", ".join(f"{k}={v}" for k, v in sorted(flags.items())))
    if (fit.mu <= MU_BOUNDS[0] + 1e-9).any():
        sys.exit(f"some problems ran to mu = {MU_BOUNDS[0]}; the population has no mass there")
    at_bound = (fit.flag & FitFlag.MU_AT_BOUND) != 0
    tn_mean, tn_std = truncnorm.mean_std(fit.mu, fit.sigma)
    print(
        f"  at the bound mu={MU_BOUNDS[1]}: {int(at_bound.sum())} ({at_bound.mean():.1%}); their TN mean is off by"
        f" at most {np.abs(tn_mean - mean)[at_bound].max():.4f}; TN std / real std quantiles (10, 50, 90%):"
        f" {np.round(np.quantile((tn_std / std)[at_bound], [0.1, 0.5, 0.9]), 3).tolist()}"
    )
    print(f"  attainable: {int((~at_bound).sum())}, matched to {np.abs(tn_std - std)[~at_bound].max():.1e}")

    values = np.unique(level)
    group = np.searchsorted(values, level)
    level_prob = np.bincount(group) / level.size
    bound_prob = np.array([at_bound[group == g].mean() for g in range(values.size)])
    print("P(at bound | level): " + ", ".join(f"{v}:{p:.3f}" for v, p in zip(values, bound_prob)))

    log_sigma = np.log(fit.sigma)
    print("fitting mixtures (shared components, level-dependent weights):")
    bound_x, bound_group = log_sigma[at_bound, None], group[at_bound]
    _, bw, bm, bc, _ = best_mixture(bound_x, bound_group, values.size, range(1, 6), rng, "log sigma at the bound")
    inner = np.stack([fit.mu, log_sigma], axis=1)[~at_bound]
    _, iw, im, ic, _ = best_mixture(inner, group[~at_bound], values.size, range(1, 8), rng, "(mu, log sigma) inside")

    logit_mean = special.logit(np.clip(tn_mean, 1e-12, 1 - 1e-12))
    model = dict(ASSUMED, easiness_loc=float(logit_mean.mean()), easiness_scale=float(logit_mean.std()))
    model.update(dict.fromkeys(CALIBRATED, 1.0))  # placeholders, calibrated below

    def r(a, digits=6):
        return np.round(np.asarray(a, float), digits).tolist()

    data = {
        "format": FORMAT,
        "description": (
            "Law of per-problem truncated-normal score parameters (mu, sigma) and difficulty level, fitted to real"
            " PRM score moments of MATH problems, plus the simulator's correctness, answer and token constants."
        ),
        "levels": {"values": values.tolist(), "prob": r(level_prob)},
        "at_bound": {
            "mu": MU_BOUNDS[1], "prob": r(bound_prob),
            "weights": r(bw), "means": r(bm[:, 0]), "sds": r(np.sqrt(bc[:, 0, 0])),
        },
        "interior": {"space": ["mu", "log_sigma"], "weights": r(iw), "means": r(im), "covariances": r(ic, 8)},
        "model": model,
    }

    ns, bon_acc, total_tokens = read_curve(args.curves, args.dataset)
    vote_n, vote_acc = read_votes(table, args.dataset)
    fit_n = np.array([n for n in REPORT_N if n in set(ns.tolist())])
    calibration = Calibration(
        Population.from_dict(data), fit_n, bon_acc[np.searchsorted(ns, fit_n)], vote_n, vote_acc,
        args.calibration_problems, args.eval_problems, args.seed,
    )
    print(f"calibrating to {args.dataset} Best-of-N at N={fit_n.tolist()} and majority vote at N={vote_n.tolist()}"
          f" on {args.calibration_problems} drawn problems")
    theta, chi2, best_chi2 = calibration.run()
    model.update(calibration.constants(theta))
    full_curve = calibration.per_problem(theta, ns)
    vote_model = calibration.predict(theta)[1]
    tokens_target = float(np.sum(ns * total_tokens) / np.sum(ns * ns))
    model["tokens_loc"] = tokens_loc_for(tokens_target, calibration.eta, full_curve[:, 0], model)
    for key in CALIBRATED:
        print(f"  {key} = {model[key]:.4f}")
    print(f"  chi-square {chi2:.3f} on {calibration.target.size} points (best {best_chi2:.3f})")

    data["model"] = {key: (round(v, 6) if isinstance(v, float) else v) for key, v in model.items()}
    data["calibration"] = {
        "dataset": args.dataset,
        "fitted": list(CALIBRATED),
        "assumed": sorted(ASSUMED),
        "best_of_n": {"n": ns.tolist(), "target": r(bon_acc, 4), "model": r(full_curve.mean(axis=0), 4)},
        "majority": {"n": vote_n.tolist(), "target": r(vote_acc, 4), "model": r(vote_model, 4)},
        "fit_n": fit_n.tolist(),
        "chi2": round(chi2, 3),
        "best_chi2": round(best_chi2, 3),
        "tokens_per_sample": round(tokens_target, 1),
        "method": (
            "weighted least squares (binomial errors, "
            f"{args.eval_problems} problems) of exact Best-of-N accuracy (quadrature) and approximate majority-vote"
            f" accuracy averaged over {args.calibration_problems} problems drawn from this population; discrimination"
            " at the lower end of its chi-square + 1 profile interval; tokens per sample = slope of official mean"
            " total tokens against N"
        ),
    }
    data["provenance"] = {
        "source": str(args.moments),
        "source_sha256": sha256(args.moments),
        "problems": int(mean.size),
        "flags": flags,
        "curves": [str(args.curves), str(table)],
        "curves_sha256": [sha256(args.curves), sha256(table)],
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d"),
        "command": "python scripts/fit_population.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "seed": args.seed,
        "optscale": __version__,
        "numpy": np.__version__,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")

    check(Population.load(args.out), mean, std, tn_mean, tn_std, level, values, total_tokens, args)


def check(pop, mean, std, tn_mean, tn_std, level, values, total_tokens, args) -> None:
    """Print how the written population compares with the data it was fitted to."""
    sim = simulate_arrays(args.check_problems, 64, args.seed + 1, pop)
    sim_mean, sim_std = truncnorm.mean_std(sim.mu, sim.sigma)
    qs = [0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95]
    print(f"\nscore moments, quantiles {qs}:")
    print(quantile_rows("mean  real", mean, qs))
    print(quantile_rows("mean  TN fit of real", tn_mean, qs))
    print(quantile_rows("mean  simulated population", sim_mean, qs))
    print(quantile_rows("std   real", std, qs))
    print(quantile_rows("std   TN fit of real", tn_std, qs))
    print(quantile_rows("std   simulated population", sim_std, qs))
    corr = [np.corrcoef(m, s)[0, 1] for m, s in ((mean, std), (tn_mean, tn_std), (sim_mean, sim_std))]
    print("  corr(mean, std): real {:.3f}, TN fit {:.3f}, simulated {:.3f}".format(*corr))
    print("  mean score by level (TN fit / simulated): " + ", ".join(
        f"{v}: {tn_mean[level == v].mean():.3f}/{sim_mean[sim.level == v].mean():.3f}" for v in values))
    print("  at the bound by level (real / simulated): " + ", ".join(
        f"{v}: {b:.3f}/{np.mean(sim.mu[sim.level == v] >= MU_BOUNDS[1]):.3f}"
        for v, b in zip(values, pop.at_bound)))

    cal = pop.calibration
    curve_n = np.array(cal["best_of_n"]["n"])
    report = np.array([n for n in REPORT_N if n in set(curve_n.tolist())])
    best, vote = block_curves(sim, report, np.random.default_rng(args.seed + 2))
    index = np.searchsorted(curve_n, report)
    official_vote = dict(zip(cal["majority"]["n"], cal["majority"]["target"]))
    print(f"\naccuracy ({args.check_problems} simulated problems x 64 samples, disjoint blocks of N):")
    print("  N                  " + "".join(f"{n:8d}" for n in report))
    print("  BoN official       " + "".join(f"{a:8.3f}" for a in np.array(cal["best_of_n"]["target"])[index]))
    print("  BoN model          " + "".join(f"{a:8.3f}" for a in np.array(cal["best_of_n"]["model"])[index]))
    print("  BoN simulated      " + "".join(f"{a:8.3f}" for a in best))
    print("  majority official  " + "".join(f"{official_vote.get(n, math.nan):8.3f}" for n in report))
    print("  majority simulated " + "".join(f"{a:8.3f}" for a in vote))
    print(f"\ntokens per sample: simulated {sim.tokens.mean():.0f}, official {cal['tokens_per_sample']:.0f}"
          f" (N=1 row alone: {total_tokens[0]:.0f}); median {np.median(sim.tokens):.0f},"
          f" 99th percentile {np.quantile(sim.tokens, 0.99):.0f}")
    print("  mean tokens by level: " + ", ".join(f"{v}: {sim.tokens[sim.level == v].mean():.0f}" for v in values))
    print(f"  no answer: {np.mean(sim.answer < 0):.2%} of samples; accuracy per sample {sim.correct.mean():.3f};"
          f" verifier prefers wrong answers (a_p < 0) on {np.mean(sim.skill < 0):.1%} of problems")


if __name__ == "__main__":
    main()
