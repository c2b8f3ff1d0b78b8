"""Exact statistics: N* closed form vs brute force, Monte Carlo, extremes, invariants."""

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
