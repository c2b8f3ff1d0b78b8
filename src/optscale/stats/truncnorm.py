"""The normal distribution truncated to [0, 1], vectorised and computed in log space.

Verifier scores live in [0, 1]; OptScale models one problem's scores as i.i.d. draws of
``TN(mu, sigma)`` truncated to that interval. ``mu`` and ``sigma`` are the parameters of the
*untruncated* normal, so ``mu`` may lie outside [0, 1] (scores piled up against 1 have
``mu > 1``). Everything here broadcasts over arrays and stays finite for extreme parameters
(``mu = 60``, ``sigma = 1e-6``) because probabilities are handled as logarithms of normal
CDF differences (:func:`scipy.special.log_ndtr`). The CDF also has its limits: ``sigma = inf``
is the uniform on [0, 1], and parameters whose standardised bounds overflow float64 (``mu = 1e200``,
``sigma = 1e-300``) are the point mass at ``mu`` clipped to [0, 1].
"""

from __future__ import annotations

import numpy as np
from scipy import special

_LOG_SQRT_2PI = 0.5 * np.log(2.0 * np.pi)

__all__ = [
    "log_ndtr_diff",
    "log_normalizer",
    "logpdf",
    "pdf",
    "logcdf",
    "logsf",
    "cdf",
    "sf",
    "ppf",
    "sample",
    "mean_std",
    "mills_ratios",
]


def _f(x) -> np.ndarray:
    return np.asarray(x, dtype=float)


def log_ndtr_diff(lo, hi) -> np.ndarray:
    """``log(Phi(hi) - Phi(lo))`` for ``lo <= hi``, accurate in both tails.

    The difference is taken on the side of the mode where it does not cancel: for intervals
    in the upper tail the identity ``Phi(hi) - Phi(lo) = Phi(-lo) - Phi(-hi)`` moves it into
    the lower tail, where ``log_ndtr`` keeps full relative precision.
    """
    lo, hi = np.broadcast_arrays(_f(lo), _f(hi))
    flip = lo > 0
    a = np.where(flip, -hi, lo)
    b = np.where(flip, -lo, hi)
    la = special.log_ndtr(a)
    lb = special.log_ndtr(b)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        out = lb + np.log(-np.expm1(la - lb))
        # A short interval (relative to the scale on which the density changes there) makes
        # the two CDFs nearly equal and their difference cancel: integrate the density instead.
        narrow = (hi - lo) * (1.0 + np.maximum(np.abs(lo), np.abs(hi))) < _NARROW
    if np.any(narrow):
        out = np.where(narrow, _log_integral(np.where(narrow, lo, 0.0), np.where(narrow, hi, 1.0)), out)
    return np.where(hi <= lo, -np.inf, out)


#: Intervals with ``width * (1 + |end|) <`` this are integrated by Gauss-Legendre quadrature,
#: whose 12 nodes are exact to rounding there (the log density is nearly linear on them).
_NARROW = 0.25
_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(12)


def _log_integral(lo, hi) -> np.ndarray:
    """``log of the integral of the standard normal density over [lo, hi]`` by quadrature in log space."""
    half = (hi - lo) / 2.0
    t = ((hi + lo) / 2.0)[..., None] + half[..., None] * _GL_NODES
    with np.errstate(divide="ignore"):
        return special.logsumexp(-0.5 * t * t, b=_GL_WEIGHTS, axis=-1) + np.log(half) - 0.5 * np.log(2 * np.pi)


def log_normalizer(mu, sigma) -> np.ndarray:
    """``log Z`` with ``Z = Phi((1 - mu)/sigma) - Phi(-mu/sigma)``, the mass the normal puts on [0, 1]."""
    mu, sigma = _f(mu), _f(sigma)
    return log_ndtr_diff(-mu / sigma, (1.0 - mu) / sigma)


def logpdf(x, mu, sigma) -> np.ndarray:
    """Log density on [0, 1]; ``-inf`` outside."""
    x, mu, sigma = _f(x), _f(mu), _f(sigma)
    z = (x - mu) / sigma
    out = -0.5 * z * z - _LOG_SQRT_2PI - np.log(sigma) - log_normalizer(mu, sigma)
    return np.where((x < 0) | (x > 1), -np.inf, out)


def pdf(x, mu, sigma) -> np.ndarray:
    """Density on [0, 1]."""
    return np.exp(logpdf(x, mu, sigma))


def _log_mass(lo, hi, mu, sigma) -> np.ndarray:
    """``log P(lo <= X <= hi)`` for ``0 <= lo <= hi <= 1``."""
    return log_ndtr_diff((lo - mu) / sigma, (hi - mu) / sigma) - log_normalizer(mu, sigma)


#: Above this ``sigma`` the normal CDF difference cancels; the density on [0, 1] is then
#: ``exp(c t)`` with ``c = mu / sigma**2`` up to a relative ``1 / (2 sigma**2)`` (1e-12 here).
_WIDE_SIGMA = 1e6


def _tilted_logcdf(x, c) -> np.ndarray:
    """``log F(x)`` of the density ``exp(c t)`` on [0, 1] (the uniform at ``c = 0``), for ``0 <= x <= 1``.

    For ``|c| < 1e-10`` the first-order series ``log x + c (x - 1) / 2`` (error below 1e-20): the exact
    form would multiply subnormal numbers (``c * x`` for ``c`` near 1e-320 keeps one or two digits)."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        up = c * (x - 1.0) + np.log(-np.expm1(-c * x)) - np.log(-np.expm1(-c))
        down = np.log(-np.expm1(c * x)) - np.log(-np.expm1(c))
        series = np.log(x) + c * (x - 1.0) / 2.0
        return np.where(np.abs(c) < 1e-10, series, np.where(c > 0, up, down))


def _limits(log_p, xc, mu, sigma, upper: bool) -> np.ndarray:
    """``log_p`` (log CDF, or log survival when ``upper``) with the wide and degenerate limits filled in."""
    wide = sigma > _WIDE_SIGMA
    with np.errstate(over="ignore", invalid="ignore"):
        c = np.where(wide, mu / np.where(wide, sigma, 1.0) ** 2, 0.0)
    # The survival of exp(c t) at x is the CDF of exp(-c t) at 1 - x (reflection t -> 1 - t).
    tilted = _tilted_logcdf(1.0 - xc, -c) if upper else _tilted_logcdf(xc, c)
    out = np.where(wide, tilted, log_p)
    # Standardised bounds beyond float64 (|mu| / sigma > 1e154): all mass sits at clip(mu, 0, 1).
    point = np.clip(mu, 0.0, 1.0)
    below = xc < point if not upper else xc > point
    degenerate = np.where(below, -np.inf, np.where(xc == point, -np.log(2.0), 0.0))
    known = ~(np.isnan(xc) | np.isnan(mu) | np.isnan(sigma))
    return np.where(np.isnan(out) & known & (sigma > 0), degenerate, out)


def logcdf(x, mu, sigma) -> np.ndarray:
    """``log F(x)``; exact to full precision also when ``F(x)`` is close to 1."""
    x, mu, sigma = np.broadcast_arrays(_f(x), _f(mu), _f(sigma))
    xc = np.clip(x, 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        direct = _log_mass(0.0, xc, mu, sigma)
        # Near F = 1 use log F = log1p(-S): the survival S keeps its precision.
        via_sf = np.log1p(-np.exp(_log_mass(xc, 1.0, mu, sigma)))
    out = _limits(np.where(direct > -np.log(2.0), via_sf, direct), xc, mu, sigma, upper=False)
    out = np.where(x <= 0, -np.inf, out)
    return np.where(x >= 1, 0.0, out)


def logsf(x, mu, sigma) -> np.ndarray:
    """``log(1 - F(x))``."""
    x, mu, sigma = np.broadcast_arrays(_f(x), _f(mu), _f(sigma))
    xc = np.clip(x, 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        direct = _log_mass(xc, 1.0, mu, sigma)
        via_cdf = np.log1p(-np.exp(_log_mass(0.0, xc, mu, sigma)))
    out = _limits(np.where(direct > -np.log(2.0), via_cdf, direct), xc, mu, sigma, upper=True)
    out = np.where(x <= 0, 0.0, out)
    return np.where(x >= 1, -np.inf, out)


def cdf(x, mu, sigma) -> np.ndarray:
    """``F(x)`` on [0, 1] (0 below, 1 above)."""
    return np.exp(logcdf(x, mu, sigma))


def sf(x, mu, sigma) -> np.ndarray:
    """``1 - F(x)``."""
    return np.exp(logsf(x, mu, sigma))


def ppf(q, mu, sigma) -> np.ndarray:
    """Quantile function (scipy's tail-accurate truncated-normal ppf)."""
    from scipy import stats  # imported lazily: scipy.stats costs a second at CLI start-up

    mu, sigma = _f(mu), _f(sigma)
    return stats.truncnorm.ppf(q, -mu / sigma, (1.0 - mu) / sigma, loc=mu, scale=sigma)


def sample(mu, sigma, size=None, rng: np.random.Generator | int | None = None) -> np.ndarray:
    """Draw scores; ``size`` follows numpy broadcasting rules against ``mu`` and ``sigma``."""
    from scipy import stats

    rng = np.random.default_rng(rng)
    mu, sigma = _f(mu), _f(sigma)
    return stats.truncnorm.rvs(
        -mu / sigma, (1.0 - mu) / sigma, loc=mu, scale=sigma, size=size, random_state=rng
    )


def mills_ratios(mu, sigma) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Standardised bounds ``a, b`` and the ratios ``phi(a)/Z``, ``phi(b)/Z``.

    These four numbers drive every moment and derivative of the truncated normal; the
    ratios are formed as differences of logarithms so they never overflow.
    """
    mu, sigma = _f(mu), _f(sigma)
    a = -mu / sigma
    b = (1.0 - mu) / sigma
    log_z = log_ndtr_diff(a, b)
    pa = np.exp(-0.5 * a * a - _LOG_SQRT_2PI - log_z)
    pb = np.exp(-0.5 * b * b - _LOG_SQRT_2PI - log_z)
    return a, b, pa, pb


def mean_std(mu, sigma) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of the truncated distribution (the scores' moments)."""
    mu, sigma = _f(mu), _f(sigma)
    a, b, pa, pb = mills_ratios(mu, sigma)
    mean = mu + sigma * (pa - pb)
    var = sigma**2 * (1.0 + a * pa - b * pb - (pa - pb) ** 2)
    # Cancellation can leave a tiny negative variance for extreme truncation; the true
    # variance is positive and below that of the uniform on [0, 1].
    var = np.clip(var, 0.0, 1.0 / 12.0)
    return np.clip(mean, 0.0, 1.0), np.sqrt(var)
