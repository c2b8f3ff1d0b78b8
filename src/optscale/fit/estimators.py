"""Maximum-likelihood and MAP estimates of (mu, sigma) from a few scores per problem.

The truncated normal's likelihood depends on the scores only through their count ``n``,
mean ``m`` and (biased) variance ``v``, so ragged batches reduce to three arrays and every
problem is solved at once by a vectorised projected Newton method with analytic gradient and
Hessian in ``(mu, log sigma)``.

Why the problem is well posed: in natural parameters ``(mu/sigma^2, -1/(2 sigma^2))`` the
log-likelihood of this exponential family is concave, and the box
``MU_BOUNDS x SIGMA_BOUNDS`` maps to a convex polygon there, so the MLE over the box is a
single global maximum that projected Newton reaches from any start. The box is what stops the
"runaway" of naive fits: scores piled against 1 with a long left tail have no finite MLE
(the likelihood keeps rising as ``mu -> inf`` with ``sigma^2 ~ mu``); here ``mu`` stops at its
bound and the result is flagged ``MU_AT_BOUND`` rather than returning ``mu = 60`` or NaN.
Degenerate peeks (one score, equal scores, zero spread) drive ``sigma`` to its floor and are
flagged too, so a policy can decide what to do instead of silently spending its maximum.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import InputError
from ..stats import truncnorm

__all__ = [
    "MIN_PRIOR_WIDTH",
    "MU_BOUNDS",
    "SIGMA_BOUNDS",
    "FitFlag",
    "FitResult",
    "SufficientStats",
    "fit_mle",
    "fit_map",
    "fit_stats",
    "loglik",
    "moments_to_params",
]

#: Box of admissible ``mu`` (the untruncated mean may leave [0, 1], but not without limit).
MU_BOUNDS = (-1.0, 2.0)
#: Box of admissible ``sigma``; the floor stands for "no measurable spread".
SIGMA_BOUNDS = (1e-3, 2.0)
#: Narrowest prior width a MAP fit uses: narrower priors are raised to it. For scores in [0, 1] a
#: prior this narrow already pins the estimate to its centre, and one whose square underflows
#: (below about 1e-154) would overflow the objective and silently fall back to another fit.
MIN_PRIOR_WIDTH = 1e-6

_LOG_SQRT_2PI = 0.5 * np.log(2.0 * np.pi)


class FitFlag(enum.IntFlag):
    """Diagnostics of one fit; several may be set at once."""

    OK = 0
    EMPTY = 1  #: no scores: the prior (MAP) or an uninformative fallback is returned
    SINGLE = 2  #: one score: the spread is not identified by the data
    ZERO_SPREAD = 4  #: two or more scores, all equal
    SIGMA_AT_LOWER = 8  #: sigma held at its floor (tiny or no spread)
    SIGMA_AT_UPPER = 16  #: sigma held at its ceiling (scores spread like a uniform)
    MU_AT_BOUND = 32  #: the likelihood runs off to mu -> +-inf; mu held at the box
    NOT_CONVERGED = 64  #: the iteration limit was reached

    @classmethod
    def describe(cls, value: int) -> str:
        """Readable ``'single|sigma_at_lower'`` form of a flag value (``'ok'`` when clear)."""
        names = [f.name.lower() for f in cls if f.value and value & f.value]
        return "|".join(names) or "ok"


@dataclass(frozen=True)
class SufficientStats:
    """Count, mean and biased variance of each problem's scores."""

    n: np.ndarray
    mean: np.ndarray
    var: np.ndarray

    @classmethod
    def from_samples(cls, samples: Sequence[Sequence[float]] | np.ndarray) -> "SufficientStats":
        """Reduce a list of 1-D score arrays (ragged) or a 2-D array (one row per problem).

        A flat list of numbers is refused (:class:`InputError` at ``samples[0]``) rather than
        guessed to be one problem or many one-sample problems."""
        if isinstance(samples, np.ndarray) and samples.ndim == 2:
            x = np.asarray(samples, dtype=float)
            _check_scores(x.ravel(), lambda k: f"samples[{k // x.shape[1]}][{k % x.shape[1]}]")
            n = np.full(x.shape[0], x.shape[1], dtype=np.int64)
            mean = x.mean(axis=1) if x.shape[1] else np.zeros(x.shape[0])
            var = ((x - mean[:, None]) ** 2).mean(axis=1) if x.shape[1] else np.zeros(x.shape[0])
            return cls(n, mean, var)
        if isinstance(samples, np.ndarray) and samples.ndim != 2:
            raise InputError(f"expected one row of scores per problem (a 2-D array or a list of lists), got a "
                             f"{samples.ndim}-D array; for one problem pass [scores]", "samples")
        rows = [np.asarray(s, dtype=float) for s in samples]
        flat_at = next((i for i, r in enumerate(rows) if r.ndim != 1), None)
        if flat_at is not None:
            got = "a single number" if rows[flat_at].ndim == 0 else f"a {rows[flat_at].ndim}-D array"
            raise InputError(f"expected one sequence of scores per problem (a list of lists), got {got}: a flat "
                             "list is not read as many one-sample problems; for one problem pass [scores]",
                             f"samples[{flat_at}]")
        n = np.array([r.size for r in rows], dtype=np.int64)
        flat = np.concatenate(rows) if rows else np.zeros(0)
        starts = np.concatenate([[0], np.cumsum(n)[:-1]]).astype(np.int64)
        owner = np.repeat(np.arange(n.size), n)
        _check_scores(flat, lambda k: f"samples[{owner[k]}][{k - starts[owner[k]]}]")
        safe_n = np.maximum(n, 1)
        total = np.bincount(owner, weights=flat, minlength=n.size)
        mean = total / safe_n
        var = np.bincount(owner, weights=(flat - mean[owner]) ** 2, minlength=n.size) / safe_n
        return cls(n, mean, var)


def _check_scores(flat: np.ndarray, where) -> None:
    bad = np.flatnonzero(~((flat >= 0.0) & (flat <= 1.0)))
    if bad.size:
        k = int(bad[0])
        raise InputError(f"score must be a number in [0, 1], got {flat[k]!r}", where(k))


@dataclass(frozen=True)
class FitResult:
    """Per-problem estimates. ``loglik`` is the data log-likelihood at the estimate (no prior)."""

    mu: np.ndarray
    sigma: np.ndarray
    loglik: np.ndarray
    converged: np.ndarray
    flag: np.ndarray
    n: np.ndarray

    def __len__(self) -> int:
        return int(self.mu.size)

    def flag_names(self) -> list[str]:
        """Readable flags, one string per problem in flat order (a scalar fit gives one)."""
        return [FitFlag.describe(int(f)) for f in np.ravel(self.flag)]


# ----------------------------------------------------------------------------- objective


def _objective(mu, tau, n, m, v, prior):
    """Objective, gradient and Hessian in ``(mu, tau = log sigma)``.

    The data part is ``n`` times the mean log-likelihood; the prior part is a Gaussian log
    density on ``mu`` and on ``sigma`` (not on ``tau``: the MAP point is the one of the
    ``(mu, sigma)`` parametrisation).
    """
    sigma = np.exp(tau)
    a, b, pa, pb = truncnorm.mills_ratios(mu, sigma)
    log_z = truncnorm.log_ndtr_diff(a, b)
    e = 1.0 / (sigma * sigma)
    d = m - mu
    q = v + d * d
    f = n * (-0.5 * q * e - tau - log_z - _LOG_SQRT_2PI)
    g_mu = n * (d * e - (pa - pb) / sigma)
    g_tau = n * (q * e - 1.0 - (a * pa - b * pb))
    h_mm = -n * e * (1.0 + a * pa - b * pb - (pa - pb) ** 2)
    dpdt = a * a * pa - a * pa * pa + a * pa * pb + b * pa * pb - b * b * pb - b * pb * pb
    h_mt = n * (-2.0 * d * e + (pa - pb) / sigma - dpdt / sigma)
    h_tt_logz = (
        -a * pa + a**3 * pa - a * a * pa * pa + 2.0 * a * b * pa * pb + b * pb - b**3 * pb - b * b * pb * pb
    )
    h_tt = n * (-2.0 * q * e - h_tt_logz)
    if prior is not None:
        pm, ps, wm, ws = prior
        # A prior width past ~1e154 squares to inf: its terms are then 0, the limit of a flat prior.
        with np.errstate(over="ignore"):
            wm2, ws2 = wm**2, ws**2
        f = f - 0.5 * ((mu - pm) / wm) ** 2 - 0.5 * ((sigma - ps) / ws) ** 2
        g_mu = g_mu - (mu - pm) / wm2
        g_tau = g_tau - sigma * (sigma - ps) / ws2
        h_mm = h_mm - 1.0 / wm2
        h_tt = h_tt - sigma * (2.0 * sigma - ps) / ws2
    return f, np.stack([g_mu, g_tau], -1), h_mm, h_mt, h_tt


def _data_loglik(mu, sigma, n, m, v):
    log_z = truncnorm.log_normalizer(mu, sigma)
    q = v + (m - mu) ** 2
    return n * (-0.5 * q / sigma**2 - np.log(sigma) - log_z - _LOG_SQRT_2PI)


def _newton_direction(g, h_mm, h_mt, h_tt, free):
    """Newton step on the free coordinates; a scaled gradient step where H is not negative definite."""
    g = np.where(free, g, 0.0)
    both = free[:, 0] & free[:, 1]
    det = h_mm * h_tt - h_mt * h_mt
    negdef = (h_mm < 0) & (det > 0)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        d_mu = -(h_tt * g[:, 0] - h_mt * g[:, 1]) / det
        d_tau = -(-h_mt * g[:, 0] + h_mm * g[:, 1]) / det
        single_mu = np.where(h_mm < 0, -g[:, 0] / h_mm, g[:, 0] / (np.abs(h_mm) + 1.0))
        single_tau = np.where(h_tt < 0, -g[:, 1] / h_tt, g[:, 1] / (np.abs(h_tt) + 1.0))
    use_full = both & negdef & np.isfinite(d_mu) & np.isfinite(d_tau)
    d = np.stack([np.where(use_full, d_mu, single_mu), np.where(use_full, d_tau, single_tau)], -1)
    d = np.where(free, np.nan_to_num(d, nan=0.0, posinf=0.0, neginf=0.0), 0.0)
    # Never jump further than a fraction of the box in one step.
    scale = np.minimum(1.0, 0.5 / np.maximum(np.abs(d[:, 0]), 1e-300))
    scale = np.minimum(scale, 1.0 / np.maximum(np.abs(d[:, 1]), 1e-300))
    return d * scale[:, None]


def _value(mu, tau, n, m, v, prior):
    """The objective alone (line searches need no derivatives)."""
    sigma = np.exp(tau)
    q = v + (m - mu) ** 2
    f = n * (-0.5 * q / (sigma * sigma) - tau - truncnorm.log_normalizer(mu, sigma) - _LOG_SQRT_2PI)
    if prior is not None:
        pm, ps, wm, ws = prior
        f = f - 0.5 * ((mu - pm) / wm) ** 2 - 0.5 * ((sigma - ps) / ws) ** 2
    return f


_STEPS = 0.5 ** np.arange(1, 40)  # backtracking step sizes after the full Newton step


def _armijo(f, g, xs, cand, fc):
    """Sufficient increase along the projection arc."""
    gain = np.sum(g * (cand - xs), axis=-1)
    return np.isfinite(fc) & (fc >= f + 1e-4 * gain)


def _solve(n, m, v, prior, x0, lo, hi, max_iter=100, tol=1e-9):
    """Projected Newton with Armijo backtracking along the projection arc, per problem.

    Each iteration evaluates the full step for every active problem in one call and, for the
    few that reject it, all backtracking steps at once in a second call: the cost is a couple
    of vectorised evaluations per iteration whatever the batch size.
    """
    x = np.clip(x0, lo, hi)
    converged = np.zeros(len(x), dtype=bool)
    todo = np.arange(len(x))
    for _ in range(max_iter):
        if todo.size == 0:
            break
        xs = x[todo]
        nt, mt, vt = n[todo], m[todo], v[todo]
        sub_prior = None if prior is None else tuple(p[todo] for p in prior)
        f, g, h_mm, h_mt, h_tt = _objective(xs[:, 0], xs[:, 1], nt, mt, vt, sub_prior)
        at_lo = xs <= lo + 1e-12
        at_hi = xs >= hi - 1e-12
        free = ~((at_lo & (g < 0)) | (at_hi & (g > 0)))
        pg = np.max(np.abs(np.where(free, g, 0.0)), axis=1) / (1.0 + np.abs(f))
        done = pg <= tol
        d = _newton_direction(g, h_mm, h_mt, h_tt, free)
        cand = np.clip(xs + d, lo, hi)
        accepted = ~done & _armijo(f, g, xs, cand, _value(cand[:, 0], cand[:, 1], nt, mt, vt, sub_prior))
        x_new = np.where(accepted[:, None], cand, xs)
        retry = np.flatnonzero(~done & ~accepted)
        if retry.size:
            k = _STEPS.size
            back = np.clip(xs[retry, None, :] + _STEPS[None, :, None] * d[retry, None, :], lo, hi)
            rep = lambda a: np.repeat(a[retry], k)  # noqa: E731
            fc = _value(back[..., 0].ravel(), back[..., 1].ravel(), rep(nt), rep(mt), rep(vt),
                        None if sub_prior is None else tuple(rep(p) for p in sub_prior)).reshape(-1, k)
            ok = _armijo(f[retry, None], g[retry, None, :], xs[retry, None, :], back, fc)
            first = np.argmax(ok, axis=1)
            found = ok.any(axis=1)
            x_new[retry[found]] = back[found, first[found]]
            accepted[retry[found]] = True
        step = np.max(np.abs(x_new - xs), axis=1)
        stalled = ~done & (~accepted | (step <= 1e-13))
        x[todo] = x_new
        # No further ascent possible: an optimum if the gradient is down to rounding noise.
        converged[todo[done | (stalled & (accepted | (pg <= 1e3 * tol)))]] = True
        todo = todo[~(done | stalled)]
    return x, converged


# ----------------------------------------------------------------------------- public API


def _bounds(mu_bounds, sigma_bounds):
    lo = np.array([mu_bounds[0], np.log(sigma_bounds[0])])
    hi = np.array([mu_bounds[1], np.log(sigma_bounds[1])])
    if not (lo < hi).all() or sigma_bounds[0] <= 0:
        raise InputError(f"invalid bounds mu={mu_bounds} sigma={sigma_bounds}", "bounds")
    return lo, hi


def _start(stats: SufficientStats, lo, hi):
    mu0 = stats.mean
    sigma0 = np.maximum(np.sqrt(stats.var), 0.02)
    return np.clip(np.stack([mu0, np.log(sigma0)], -1), lo, hi)


def fit_stats(
    stats: SufficientStats,
    prior: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None,
    mu_bounds=MU_BOUNDS,
    sigma_bounds=SIGMA_BOUNDS,
) -> FitResult:
    """Fit from sufficient statistics; ``prior = (mu0, sigma0, width_mu, width_sigma)`` or None (MLE).

    Widths below :data:`MIN_PRIOR_WIDTH` are raised to it (a narrower prior pins the fit to its centre
    just the same, and one far narrower would overflow the objective)."""
    lo, hi = _bounds(mu_bounds, sigma_bounds)
    n = stats.n.astype(float)
    m, v = stats.mean, stats.var
    size = n.size
    starts = [_start(stats, lo, hi)]
    if prior is not None:
        prior = tuple(np.broadcast_to(np.asarray(p, dtype=float), (size,)).copy() for p in prior)
        prior = (*prior[:2], *(np.maximum(w, MIN_PRIOR_WIDTH) for w in prior[2:]))
        starts.append(np.clip(np.stack([prior[0], np.log(np.maximum(prior[1], 1e-300))], -1), lo, hi))
    else:
        starts.append(np.clip(np.tile([0.5, np.log(0.3)], (size, 1)), lo, hi))
    best_x = best_f = best_conv = None
    for k, x0 in enumerate(starts):
        if prior is None and k == 1:
            # The MLE is unique (concave in natural parameters): a second start only serves
            # problems whose first run did not converge.
            retry = ~best_conv
            if not retry.any():
                break
            x, conv = best_x.copy(), best_conv.copy()
            xr, cr = _solve(n[retry], m[retry], v[retry], None, x0[retry], lo, hi)
            x[retry], conv[retry] = xr, cr
        else:
            x, conv = _solve(n, m, v, prior, x0, lo, hi)
        f = _objective(x[:, 0], x[:, 1], n, m, v, prior)[0]
        if best_x is None:
            best_x, best_f, best_conv = x, f, conv
        else:
            better = f > best_f + 1e-12 * (1 + np.abs(best_f))
            best_x = np.where(better[:, None], x, best_x)
            best_f = np.where(better, f, best_f)
            best_conv = np.where(better, conv, best_conv)
    mu, sigma = best_x[:, 0], np.exp(best_x[:, 1])
    empty = stats.n == 0
    if prior is None:
        mu = np.where(empty, 0.5, mu)
        sigma = np.where(empty, sigma_bounds[1], sigma)
    flag = np.zeros(size, dtype=np.int64)
    flag |= np.where(empty, FitFlag.EMPTY, 0)
    flag |= np.where(stats.n == 1, FitFlag.SINGLE, 0)
    flag |= np.where((stats.n >= 2) & (v <= 1e-24), FitFlag.ZERO_SPREAD, 0)
    flag |= np.where(~empty & (best_x[:, 1] <= lo[1] + 1e-9), FitFlag.SIGMA_AT_LOWER, 0)
    flag |= np.where(~empty & (best_x[:, 1] >= hi[1] - 1e-9), FitFlag.SIGMA_AT_UPPER, 0)
    flag |= np.where(~empty & ((best_x[:, 0] <= lo[0] + 1e-9) | (best_x[:, 0] >= hi[0] - 1e-9)), FitFlag.MU_AT_BOUND, 0)
    converged = best_conv | empty
    flag |= np.where(~converged, FitFlag.NOT_CONVERGED, 0)
    ll = np.where(empty, 0.0, _data_loglik(mu, sigma, n, m, v))
    return FitResult(mu=mu, sigma=sigma, loglik=ll, converged=converged, flag=flag, n=stats.n.copy())


def fit_mle(samples, mu_bounds=MU_BOUNDS, sigma_bounds=SIGMA_BOUNDS) -> FitResult:
    """Maximum-likelihood ``(mu, sigma)`` per problem (OptScale^0).

    ``samples`` is a list of 1-D score arrays, one per problem, of any lengths (or a 2-D
    array); one problem is ``[scores]``, and a flat list of numbers is refused. Scores must lie
    in [0, 1]; anything else raises :class:`InputError` naming ``samples[i][j]``. Never
    returns NaN; see :class:`FitFlag` for the degenerate cases.
    """
    return fit_stats(SufficientStats.from_samples(samples), None, mu_bounds, sigma_bounds)


def _widths(prior_width, size):
    w = np.asarray(prior_width, dtype=float)
    if w.ndim >= 1 and w.shape[-1] == 2 and (w.ndim == 2 or size != 2):
        wm, ws = w[..., 0], w[..., 1]
    else:
        wm = ws = w
    wm, ws = (np.broadcast_to(x, (size,)).astype(float) for x in (wm, ws))
    if np.any(~(wm > 0)) or np.any(~(ws > 0)):
        raise InputError("prior widths must be positive numbers", "prior_width")
    return wm, ws


def fit_map(samples, prior_mu, prior_sigma, prior_width=0.1, mu_bounds=MU_BOUNDS, sigma_bounds=SIGMA_BOUNDS) -> FitResult:
    """MAP ``(mu, sigma)`` under Gaussian priors centred on ``(prior_mu, prior_sigma)`` (OptScale^t).

    ``prior_width`` is the prior standard deviation: a scalar, one value per problem, or pairs
    ``(width_mu, width_sigma)`` (shape ``(2,)`` or ``(problems, 2)``). Priors are on the
    truncated normal's *parameters*; convert predicted score moments with
    :func:`moments_to_params` first.
    """
    stats = SufficientStats.from_samples(samples)
    size = stats.n.size
    pm = np.broadcast_to(np.asarray(prior_mu, dtype=float), (size,))
    ps = np.broadcast_to(np.asarray(prior_sigma, dtype=float), (size,))
    if not (np.isfinite(pm).all() and np.isfinite(ps).all() and (ps > 0).all()):
        raise InputError("prior_mu must be finite and prior_sigma positive", "prior")
    wm, ws = _widths(prior_width, size)
    return fit_stats(stats, (pm, ps, wm, ws), mu_bounds, sigma_bounds)


def loglik(samples, mu, sigma) -> np.ndarray:
    """Data log-likelihood of each problem's scores under ``TN(mu, sigma)``."""
    s = SufficientStats.from_samples(samples)
    return _data_loglik(np.asarray(mu, float), np.asarray(sigma, float), s.n.astype(float), s.mean, s.var)


def moments_to_params(mean, std, mu_bounds=MU_BOUNDS, sigma_bounds=SIGMA_BOUNDS) -> FitResult:
    """Truncated-normal ``(mu, sigma)`` whose score mean and std match ``(mean, std)``.

    A predictor of score *moments* cannot be used as the parameters directly: for scores near
    1 the truncated normal's ``mu`` is well above its mean. Matching is the MLE of one
    pseudo-observation with those moments (the information projection), so moments that no
    truncated normal in the box attains map to the closest one, flagged like any fit.
    """
    mean, std = np.broadcast_arrays(np.asarray(mean, dtype=float), np.asarray(std, dtype=float))
    shape = mean.shape
    mean, std = mean.ravel(), std.ravel()
    bad = np.flatnonzero(~((mean >= 0) & (mean <= 1) & (std >= 0) & (std <= 0.5)))
    if bad.size:
        k = int(bad[0])
        raise InputError(f"need 0 <= mean <= 1 and 0 <= std <= 0.5, got mean={mean[k]!r} std={std[k]!r}", f"moments[{k}]")
    stats = SufficientStats(np.ones(mean.size, dtype=np.int64), mean, std**2)
    res = fit_stats(stats, None, mu_bounds, sigma_bounds)
    flag = res.flag & ~int(FitFlag.SINGLE)
    return FitResult(
        mu=res.mu.reshape(shape), sigma=res.sigma.reshape(shape), loglik=res.loglik.reshape(shape),
        converged=res.converged.reshape(shape), flag=flag.reshape(shape), n=res.n.reshape(shape),
    )
