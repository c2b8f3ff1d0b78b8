"""Exact statistics: N* closed form vs brute force, Monte Carlo, extremes, invariants."""

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from optscale import min_samples
from optscale.errors import InputError
from optscale.stats import (UNBOUNDED, expected_best, marginal_gain, min_samples_detail,
                            prob_best_at_least, truncnorm)

mus = st.floats(-1.0, 2.0)
sigmas = st.floats(0.005, 1.0)
targets = st.floats(0.01, 0.99)
alphas = st.floats(0.01, 0.99)


def brute_force(mu, sigma, s_min, alpha, n_max):
    """Smallest N in 1..n_max with 1 - F^N >= alpha, using scipy's independent CDF."""
    f = sps.truncnorm.cdf(s_min, -mu / sigma, (1 - mu) / sigma, loc=mu, scale=sigma)
    for n in range(1, n_max + 1):
        if 1 - f**n >= alpha:
            return n
    return n_max


def test_truncnorm_matches_scipy():
    x = np.linspace(0.001, 0.999, 50)
    for mu, sigma in [(0.5, 0.2), (0.95, 0.05), (1.4, 0.3), (-0.2, 0.4)]:
        ref = sps.truncnorm(-mu / sigma, (1 - mu) / sigma, loc=mu, scale=sigma)
        np.testing.assert_allclose(truncnorm.cdf(x, mu, sigma), ref.cdf(x), rtol=1e-9, atol=1e-14)
        np.testing.assert_allclose(truncnorm.pdf(x, mu, sigma), ref.pdf(x), rtol=1e-9)
        m, s = truncnorm.mean_std(mu, sigma)
        assert m == pytest.approx(ref.mean(), rel=1e-9)
        assert s == pytest.approx(ref.std(), rel=1e-7)


def test_logcdf_keeps_precision_near_one():
    # F(0.99) for N(0.5, 0.05) truncated is 1 - 1e-23-ish: log F must not round to 0 silently
    lf = truncnorm.logcdf(0.9, 0.5, 0.05)
    assert lf < 0
    sf = truncnorm.sf(0.9, 0.5, 0.05)
    assert -lf == pytest.approx(sf, rel=1e-9)


@settings(max_examples=300, deadline=None)
@given(mus, sigmas, targets, alphas, st.integers(1, 64))
def test_closed_form_equals_brute_force(mu, sigma, s_min, alpha, n_max):
    got = min_samples(mu, sigma, s_min, alpha, n_max)
    ref = brute_force(mu, sigma, s_min, alpha, n_max)
    if got != ref:
        # Only legitimate disagreement: the defining inequality is tight to rounding.
        f = truncnorm.cdf(s_min, mu, sigma)
        assert abs((1 - f ** min(got, ref)) - alpha) < 1e-9
    else:
        assert got == ref


@settings(max_examples=200, deadline=None)
@given(mus, sigmas, targets, alphas)
def test_definition_holds_exactly(mu, sigma, s_min, alpha):
    n, capped = min_samples_detail(mu, sigma, s_min, alpha)
    log_f = truncnorm.logcdf(s_min, mu, sigma)
    if n == UNBOUNDED:
        assert capped
        return
    assert n >= 1
    assert n * log_f <= np.log1p(-alpha)
    if n > 1:
        assert (n - 1) * log_f > np.log1p(-alpha)


@settings(max_examples=200, deadline=None)
@given(mus, sigmas, targets, alphas, st.floats(0.0, 0.5))
def test_monotone_in_alpha_and_target(mu, sigma, s_min, alpha, bump):
    a2 = min(0.999, alpha + bump)
    s2 = min(0.999, s_min + bump)
    assert min_samples(mu, sigma, s_min, a2, 10**6) >= min_samples(mu, sigma, s_min, alpha, 10**6)
    assert min_samples(mu, sigma, s2, alpha, 10**6) >= min_samples(mu, sigma, s_min, alpha, 10**6)


def test_monte_carlo_probability_reached():
    rng = np.random.default_rng(3)
    for mu, sigma, s_min, alpha in [(0.8, 0.1, 0.9, 0.9), (0.6, 0.2, 0.85, 0.8), (1.1, 0.05, 0.995, 0.95)]:
        n = int(min_samples(mu, sigma, s_min, alpha))
        best = truncnorm.sample(mu, sigma, size=(40000, n), rng=rng).max(axis=1)
        hit = (best >= s_min).mean()
        assert hit >= alpha - 0.01
        assert hit == pytest.approx(prob_best_at_least(s_min, mu, sigma, n), abs=0.01)
        if n > 1:
            fewer = truncnorm.sample(mu, sigma, size=(40000, n - 1), rng=rng).max(axis=1)
            assert (fewer >= s_min).mean() < alpha + 0.01


def test_edge_cases_defined_and_finite():
    # target below all mass: one sample is enough
    assert min_samples(0.9, 1e-6, 0.5, 0.99) == 1
    # unreachable target: capped, flagged; uncapped gives the sentinel
    n, capped = min_samples_detail(0.3, 1e-6, 0.9, 0.9, n_max=64)
    assert n == 64 and capped
    assert min_samples(0.3, 1e-6, 0.9, 0.9) == UNBOUNDED
    # runaway estimates from naive MLE stay finite
    out = min_samples([60.0, -60.0, 0.5], [1e-6, 1e-6, 1e-6], 0.9, 0.9, n_max=16)
    assert out.tolist() == [1, 16, 16]
    assert np.all(np.isfinite(truncnorm.logcdf(0.9, [60.0, 0.5], [2.0, 1e-6])))


def test_broadcasting_returns_integers():
    out = min_samples(np.array([[0.7], [0.9]]), np.array([0.1, 0.2, 0.3]), 0.9, 0.9, n_max=64)
    assert out.shape == (2, 3) and out.dtype == np.int64
    assert isinstance(min_samples(0.7, 0.1, 0.9, 0.9), (int, np.integer))


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, float("nan")])
def test_bad_alpha(alpha):
    with pytest.raises(InputError, match="alpha"):
        min_samples(0.5, 0.1, 0.9, alpha)


def test_bad_n_max():
    with pytest.raises(InputError, match="n_max"):
        min_samples(0.5, 0.1, 0.9, 0.9, n_max=0)


def test_expected_best_and_gain_vs_monte_carlo():
    rng = np.random.default_rng(5)
    for mu, sigma in [(0.8, 0.15), (0.97, 0.02), (1.3, 0.4)]:
        draws = truncnorm.sample(mu, sigma, size=(100000, 17), rng=rng)
        for n in (1, 4, 16):
            mc = np.maximum.accumulate(draws, axis=1)[:, n - 1].mean()
            assert expected_best(mu, sigma, n) == pytest.approx(mc, abs=3e-3 * sigma + 1e-4)
            gain = marginal_gain(mu, sigma, n)
            assert gain == pytest.approx(expected_best(mu, sigma, n + 1) - expected_best(mu, sigma, n), rel=1e-4, abs=1e-12)
            assert gain > 0
    # tiny sigma: the best of any N is the (almost) constant score
    assert expected_best(0.7, 1e-6, 32) == pytest.approx(0.7, abs=1e-4)


# --- the public boundary of N* (issue 9, defect 3) and the CDF's limits ---------------------------


def _no_warnings(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn(*args, **kwargs)


@pytest.mark.parametrize("s_min", [1.0, 1.5, np.inf])
def test_unreachable_target_is_unbounded_not_two(s_min):
    # s_min = 1 used to give N* = 2 with a RuntimeWarning (ln F = 0 divided as -inf, not caught)
    assert _no_warnings(min_samples, 0.9, 0.1, s_min, 0.9) == UNBOUNDED
    n, capped = _no_warnings(min_samples_detail, [0.9, 2.0, -1.0], 0.1, s_min, 0.9, n_max=16)
    assert n.tolist() == [16, 16, 16] and capped.all()
    assert _no_warnings(prob_best_at_least, s_min, 0.9, 0.1, 5) == 0.0


@pytest.mark.parametrize("kwargs,where", [
    ({"mu": np.nan}, "mu"), ({"mu": np.inf}, "mu"), ({"mu": [0.5, -np.inf]}, "mu"),
    ({"sigma": np.nan}, "sigma"), ({"sigma": -0.1}, "sigma"), ({"sigma": 0.0}, "sigma"), ({"sigma": -np.inf}, "sigma"),
    ({"s_min": np.nan}, "s_min"), ({"alpha": 1.0}, "alpha"),
    ({"n_max": np.nan}, "n_max"), ({"n_max": 2.5}, "n_max"), ({"n_max": 10**20}, "n_max"), ({"n_max": 0}, "n_max"),
    ({"n_max": "many"}, "n_max"),
])
def test_bad_parameters_raise_value_errors_naming_them(kwargs, where):
    args = {"mu": 0.9, "sigma": 0.1, "s_min": 0.95, "alpha": 0.9} | kwargs
    for fn in (min_samples, min_samples_detail):
        with pytest.raises(ValueError) as info:
            fn(**args)
        assert isinstance(info.value, InputError) and info.value.where == where


@settings(max_examples=100, deadline=None)
@given(st.floats(-5, 5), st.floats(0.01, 0.99), alphas, st.integers(1, 64))
def test_infinite_sigma_is_the_uniform_limit(mu, s_min, alpha, n):
    # F(s) = s on [0, 1]: N* = ceil(ln(1 - alpha) / ln s) and Pr(best of n >= s) = 1 - s**n
    assert _no_warnings(truncnorm.logcdf, s_min, mu, np.inf) == pytest.approx(np.log(s_min), rel=1e-15)
    assert prob_best_at_least(s_min, mu, np.inf, n) == pytest.approx(1 - s_min**n, rel=1e-12, abs=1e-300)
    got = min_samples(mu, np.inf, s_min, alpha)
    log_f, log_miss = np.log(s_min), np.log1p(-alpha)
    assert got * log_f <= log_miss and (got == 1 or (got - 1) * log_f > log_miss)


def _reference(x, mu, sigma):
    """``(log F(x), log(1 - F(x)))`` of the truncated normal at 60 digits (mpmath), independent of the code."""
    import mpmath as mp

    mp.mp.dps = 60
    if np.isinf(sigma):
        return float(mp.log(x)), float(mp.log1p(-x))
    mu, sigma, x = mp.mpf(mu), mp.mpf(sigma), mp.mpf(x)

    def mass(lo, hi):  # Phi(hi) - Phi(lo) on the side of the mode where it does not cancel
        return mp.ncdf(hi) - mp.ncdf(lo) if lo <= 0 else mp.ncdf(-lo) - mp.ncdf(-hi)

    a, b, c = -mu / sigma, (1 - mu) / sigma, (x - mu) / sigma
    below, above = mass(a, c) / mass(a, b), mass(c, b) / mass(a, b)
    # the larger side as log1p of the smaller one: 1 - 1e-200 needs no 200 digits
    return (float(mp.log(below) if below < 0.5 else mp.log1p(-above)),
            float(mp.log(above) if above < 0.5 else mp.log1p(-below)))


@settings(max_examples=300, deadline=None)
@given(st.floats(0.001, 0.999), st.floats(-50, 50),
       st.one_of(st.floats(-3, 15).map(lambda e: 10.0**e), st.just(np.inf)))
def test_logcdf_matches_a_high_precision_reference_for_any_spread(x, mu, sigma):
    # Huge sigma used to give NaN (the normal CDF difference cancels): N* came out "unbounded".
    log_f, log_s = _reference(x, mu, sigma)
    assert _no_warnings(truncnorm.logcdf, x, mu, sigma) == pytest.approx(log_f, rel=1e-7, abs=1e-300)
    assert _no_warnings(truncnorm.logsf, x, mu, sigma) == pytest.approx(log_s, rel=1e-7, abs=1e-300)


@settings(max_examples=300, deadline=None)
@given(st.floats(-1e300, 1e300), st.one_of(st.floats(1e-300, 1e300), st.just(np.inf)), st.floats(-1, 2), alphas,
       st.one_of(st.none(), st.integers(1, 2**53)))
def test_min_samples_is_always_defined(mu, sigma, s_min, alpha, n_max):
    # Any finite mu, positive sigma and target: an integer in range, the flag consistent, no warning.
    n, capped = _no_warnings(min_samples_detail, mu, sigma, s_min, alpha, n_max)
    assert n.dtype == np.int64 and capped.dtype == bool
    if n_max is None:
        assert 1 <= n and (n != UNBOUNDED or capped)
    else:
        assert 1 <= n <= n_max and (not capped or n == n_max)
    if s_min >= 1:
        assert capped and n == (UNBOUNDED if n_max is None else n_max)
    if s_min <= 0:
        assert n == 1 and not capped
    if not capped:  # the defining inequality, exactly, for the CDF the code uses
        log_f = truncnorm.logcdf(s_min, mu, sigma)
        assert n * log_f <= np.log1p(-alpha) and (n == 1 or (n - 1) * log_f > np.log1p(-alpha))
    # more certainty never needs fewer samples
    a2 = min(alpha + 0.5 * (1 - alpha), 0.999999)
    assert _no_warnings(min_samples, mu, sigma, s_min, a2, n_max) >= n


def test_vectorised_over_mixed_regimes():
    mu = np.array([0.9, 0.9, 1e200, -1e200, 0.7, 0.7])
    sigma = np.array([0.1, np.inf, 1e-3, 1e-3, 1e-300, 1e300])
    out = _no_warnings(min_samples, mu, sigma, 0.8, 0.9, n_max=64)
    single = [min_samples(m, s, 0.8, 0.9, n_max=64) for m, s in zip(mu, sigma)]
    assert out.tolist() == single
    assert out.tolist()[1:5] == [11, 1, 64, 64]  # uniform: ceil(ln 0.1 / ln 0.8) = 11; point masses at 1, 0, 0.7


def test_prob_best_at_least_is_never_negative_zero():
    # `nstar --s-min 1` printed "Pr(...) = -0.0000": -expm1(0.0) is -0.0.
    p = float(prob_best_at_least(1.0, 0.9, 0.1, 64))
    assert p == 0.0 and math.copysign(1.0, p) == 1.0


def test_nan_sigma_is_called_not_a_number():
    with pytest.raises(InputError) as info:
        min_samples_detail(0.9, float("nan"), 0.95, 0.9)
    assert info.value.where == "sigma" and "got nan" in info.value.detail and "[nan]" not in info.value.detail


@pytest.mark.parametrize("lo,width", [(-5e-7, 1e-9), (0.0, 1e-9), (3.0, 1e-8), (-20.0, 1e-6), (0.3, 0.05),
                                      (-1e-12, 1e-12)])
def test_log_ndtr_diff_keeps_precision_on_narrow_intervals(lo, width):
    # Two nearly equal CDFs cancel: sigma = 1e6 once gave 2e-7 relative error in logsf.
    import mpmath

    mpmath.mp.dps = 50
    want = float(mpmath.log(mpmath.ncdf(lo + width) - mpmath.ncdf(lo)))
    assert float(truncnorm.log_ndtr_diff(lo, lo + width)) == pytest.approx(want, rel=1e-12)
