"""The best of N i.i.d. truncated-normal scores, and the least N that reaches a target.

With ``F`` the score CDF, the best of N samples stays below ``s_min`` with probability
``F(s_min)**N``. The least N with ``Pr(best >= s_min) >= alpha`` is therefore the closed form
``N* = ceil(ln(1 - alpha) / ln F(s_min))``, computed here exactly (no grid, no loop over N).
"""

from __future__ import annotations

import numpy as np
from scipy import special

from ..errors import InputError
from . import truncnorm

__all__ = [
    "UNBOUNDED",
    "min_samples",
    "min_samples_detail",
    "prob_best_at_least",
    "best_of_n_logcdf",
    "expected_best",
    "marginal_gain",
]

#: Returned by :func:`min_samples` without ``n_max`` when no finite N reaches the target.
UNBOUNDED = np.iinfo(np.int64).max
#: Largest accepted ``n_max``: integers stay exact in float64 up to here.
MAX_N = 2**53


def _check_alpha(alpha) -> np.ndarray:
    alpha = np.asarray(alpha, dtype=float)
    if np.any(~((alpha > 0) & (alpha < 1))):
        raise InputError(f"must lie strictly between 0 and 1, got {alpha.ravel()[:3].tolist()}", "alpha")
    return alpha


def _check_n_max(n_max):
    if n_max is None:
        return None
    try:
        value = np.asarray(n_max, dtype=float)
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"must be an integer >= 1, got {n_max!r}", "n_max") from None
    if np.any(~((value >= 1) & (value <= MAX_N) & (value == np.floor(value)))):
        raise InputError(f"must be an integer in [1, 2**53], got {value.ravel()[:3].tolist()}", "n_max")
    return value.astype(np.int64)


def _check_params(mu, sigma, s_min) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parameters as float arrays; NaN, an infinite ``mu`` or a ``sigma`` that is not positive raise."""
    mu, sigma, s_min = (np.asarray(v, dtype=float) for v in (mu, sigma, s_min))
    if np.any(~np.isfinite(mu)):
        raise InputError(f"must be a finite number, got {mu.ravel()[~np.isfinite(mu.ravel())][:3].tolist()}", "mu")
    if np.any(np.isnan(sigma)):
        raise InputError("must be a positive number (inf: uniform scores), got nan", "sigma")
    if np.any(~(sigma > 0)):
        raise InputError(f"must be positive (inf: uniform scores), got {sigma.ravel()[~(sigma.ravel() > 0)][:3].tolist()}",
                         "sigma")
    if np.any(np.isnan(s_min)):
        raise InputError("must be a number, got nan", "s_min")
    return mu, sigma, s_min


def min_samples_detail(mu, sigma, s_min, alpha, n_max=None) -> tuple[np.ndarray, np.ndarray]:
    """Least N with ``Pr(best of N >= s_min) >= alpha``, and whether it was capped.

    Returns ``(n, capped)``. Edge cases are defined, never NaN: ``F(s_min) = 0`` (any sample
    beats the target) gives 1; ``F(s_min) = 1`` (the target is unreachable, e.g. ``s_min >= 1``)
    and any N above ``n_max`` give ``n_max`` with ``capped = True``; without ``n_max`` they give
    :data:`UNBOUNDED` (so does any N beyond 2**52, where float64 stops counting exactly).
    ``sigma = inf`` is the uniform limit ``F(s) = s``. NaN, an infinite ``mu``, a ``sigma`` that
    is not positive, ``alpha`` outside (0, 1) and an ``n_max`` that is not an integer in
    [1, 2**53] raise :class:`~optscale.errors.InputError` (a ``ValueError``) naming the argument.
    The returned N satisfies the defining inequality exactly in floating point:
    ``N * ln F <= ln(1 - alpha) < (N - 1) * ln F``.
    """
    mu, sigma, s_min = _check_params(mu, sigma, s_min)
    alpha = _check_alpha(alpha)
    n_max = _check_n_max(n_max)
    log_f = truncnorm.logcdf(s_min, mu, sigma)
    log_miss = np.log1p(-alpha)  # ln(1 - alpha) < 0
    log_f, log_miss = np.broadcast_arrays(log_f, log_miss)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ratio = log_miss / log_f  # log_f = 0 gives +inf; log_f = -inf gives +0
    # F = 1 (log_f = +-0) leaves no chance; beyond 2**52 samples float64 stops counting exactly.
    hopeless = ~(log_f < 0) | ~(ratio < 2.0**52)
    n = np.ceil(np.where(hopeless, 1.0, ratio)).astype(np.int64)
    n = np.maximum(n, 1)
    # One exact correction step: floating division can land just above an integer.
    lower = np.maximum(n - 1, 1)
    n = np.where((lower < n) & (lower * log_f <= log_miss), lower, n)
    n = np.where(~hopeless & (n * log_f > log_miss), n + 1, n)
    n = np.where(hopeless, UNBOUNDED, n)
    if n_max is None:
        return n, hopeless
    capped = n > n_max
    return np.where(capped, n_max, n).astype(np.int64), capped


def min_samples(mu, sigma, s_min, alpha, n_max=None) -> np.ndarray:
    """``N* = ceil(ln(1 - alpha) / ln F(s_min))``, capped at ``n_max``; integers, broadcast.

    See :func:`min_samples_detail` for the edge cases and the flag telling capped values apart.
    """
    n, _ = min_samples_detail(mu, sigma, s_min, alpha, n_max)
    return n if n.ndim else n[()]


def best_of_n_logcdf(x, mu, sigma, n) -> np.ndarray:
    """``log Pr(best of n <= x) = n log F(x)``."""
    return np.asarray(n, dtype=float) * truncnorm.logcdf(x, mu, sigma)


def prob_best_at_least(s_min, mu, sigma, n) -> np.ndarray:
    """``Pr(best of n >= s_min) = 1 - F(s_min)**n``, without cancellation near 0."""
    with np.errstate(invalid="ignore"):
        return 0.0 - np.expm1(best_of_n_logcdf(s_min, mu, sigma, n))  # 0.0 - 0.0 is +0.0, never -0.0


_GL_X, _GL_W = special.roots_legendre(96)


def expected_best(mu, sigma, n) -> np.ndarray:
    """``E[best of n] = integral_0^1 (1 - F(x)**n) dx``, broadcast over ``mu, sigma, n``.

    The integrand is 1 below the 1e-12 quantile of the best-of-n distribution and 0 above its
    1 - 1e-12 quantile, so Gauss-Legendre quadrature runs only between those two points,
    where it is smooth even for tiny ``sigma``.
    """
    mu, sigma, n = np.broadcast_arrays(np.asarray(mu, float), np.asarray(sigma, float), np.asarray(n, float))
    eps = 1e-12
    # Quantile p of the maximum is F^-1(p**(1/n)); exponents stay accurate through expm1/log1p.
    lo = truncnorm.ppf(np.exp(np.log(eps) / n), mu, sigma)
    hi = truncnorm.ppf(np.exp(np.log1p(-eps) / n), mu, sigma)
    lo = np.nan_to_num(lo, nan=0.0)
    hi = np.nan_to_num(hi, nan=1.0)
    half = 0.5 * (hi - lo)
    x = lo[..., None] + half[..., None] * (_GL_X + 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        tail = -np.expm1(n[..., None] * truncnorm.logcdf(x, mu[..., None], sigma[..., None]))
    return lo + half * np.sum(_GL_W * tail, axis=-1)


def marginal_gain(mu, sigma, n) -> np.ndarray:
    """Expected improvement of the best score from one more sample: ``E[best of n+1] - E[best of n]``.

    Written as ``integral F(x)**n (1 - F(x)) dx`` rather than a difference of two expectations,
    so it stays accurate when the gain is tiny.
    """
    mu, sigma, n = np.broadcast_arrays(np.asarray(mu, float), np.asarray(sigma, float), np.asarray(n, float))
    eps = 1e-12
    lo = np.nan_to_num(truncnorm.ppf(np.exp(np.log(eps) / (n + 1)), mu, sigma), nan=0.0)
    hi = np.nan_to_num(truncnorm.ppf(1.0 - eps, mu, sigma), nan=1.0)
    half = 0.5 * (hi - lo)
    x = lo[..., None] + half[..., None] * (_GL_X + 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        log_f = truncnorm.logcdf(x, mu[..., None], sigma[..., None])
        integrand = np.exp(n[..., None] * log_f) * -np.expm1(log_f)
    return half * np.sum(_GL_W * integrand, axis=-1)
