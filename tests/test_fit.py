"""Estimators: reach the multi-start scipy optimum, handle degenerate peeks, never NaN."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import optimize

from optscale.errors import InputError
from optscale.fit import MU_BOUNDS, SIGMA_BOUNDS, FitFlag, fit_map, fit_mle, moments_to_params
from optscale.fit.estimators import _objective
from optscale.stats import truncnorm


def scipy_reference(x, prior=None, starts=5, seed=0):
    """Multi-start L-BFGS-B with numeric gradients over the same box (the slow reference)."""
    x = np.asarray(x, float)

    def neg(theta):
        mu, sigma = theta
        val = float(np.sum(truncnorm.logpdf(x, mu, sigma)))
        if prior is not None:
            pm, ps, w = prior
            val += -0.5 * ((mu - pm) / w) ** 2 - 0.5 * ((sigma - ps) / w) ** 2
        return -val

    rng = np.random.default_rng(seed)
    best = None
    for k in range(starts):
        x0 = [x.mean(), max(x.std(), 0.02)] if k == 0 else [rng.uniform(*MU_BOUNDS), rng.uniform(0.01, 1.0)]
        res = optimize.minimize(neg, x0, method="L-BFGS-B", bounds=[MU_BOUNDS, SIGMA_BOUNDS])
        if best is None or res.fun < best.fun:
            best = res
    return best


def test_gradient_and_hessian_match_finite_differences():
    n, m, v = np.array([7.0]), np.array([0.83]), np.array([0.011])
    prior = tuple(np.array([a]) for a in (0.9, 0.1, 0.2, 0.05))
    for mu, tau in [(0.8, np.log(0.15)), (1.6, np.log(0.4)), (0.97, np.log(0.02)), (-0.4, np.log(0.9))]:
        for pr in (None, prior):
            f = lambda a, b: _objective(np.array([a]), np.array([b]), n, m, v, pr)  # noqa: E731
            _, g, hmm, hmt, htt = f(mu, tau)
            e = 1e-6
            assert g[0, 0] == pytest.approx((f(mu + e, tau)[0] - f(mu - e, tau)[0])[0] / (2 * e), rel=1e-5, abs=1e-6)
            assert g[0, 1] == pytest.approx((f(mu, tau + e)[0] - f(mu, tau - e)[0])[0] / (2 * e), rel=1e-5, abs=1e-6)
            assert hmm[0] == pytest.approx((f(mu + e, tau)[1][0, 0] - f(mu - e, tau)[1][0, 0]) / (2 * e), rel=1e-4, abs=1e-4)
            assert hmt[0] == pytest.approx((f(mu, tau + e)[1][0, 0] - f(mu, tau - e)[1][0, 0]) / (2 * e), rel=1e-4, abs=1e-4)
            assert htt[0] == pytest.approx((f(mu, tau + e)[1][0, 1] - f(mu, tau - e)[1][0, 1]) / (2 * e), rel=1e-4, abs=1e-4)


def _random_problems(count, seed, real_looking=False):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        n = int(rng.integers(3, 21))
        if real_looking:  # PRM-like: scores piled near 1 with a left tail
            out.append(np.clip(1 - rng.exponential(rng.uniform(0.005, 0.2), n), 0, 1))
        else:
            out.append(truncnorm.sample(rng.uniform(-0.5, 1.5), rng.uniform(0.02, 0.8), n, rng=rng))
    return out


@pytest.mark.parametrize("real_looking", [False, True])
def test_mle_reaches_multistart_scipy_loglik(real_looking):
    problems = _random_problems(25, 11, real_looking)
    res = fit_mle(problems)
    assert res.converged.all()
    for i, x in enumerate(problems):
        ref = scipy_reference(x)
        assert res.loglik[i] >= -ref.fun - 1e-6 * (1 + abs(ref.fun))


def test_map_reaches_multistart_scipy_objective():
    problems = _random_problems(25, 12, real_looking=True)
    rng = np.random.default_rng(1)
    pm, ps = rng.uniform(0.6, 1.2, 25), rng.uniform(0.02, 0.3, 25)
    res = fit_map(problems, pm, ps, 0.1)
    for i, x in enumerate(problems):
        ref = scipy_reference(x, prior=(pm[i], ps[i], 0.1))
        mine = res.loglik[i] - 0.5 * ((res.mu[i] - pm[i]) / 0.1) ** 2 - 0.5 * ((res.sigma[i] - ps[i]) / 0.1) ** 2
        assert mine >= -ref.fun - 1e-6 * (1 + abs(ref.fun))


def test_mle_recovers_parameters_on_large_samples():
    rng = np.random.default_rng(2)
    truth = [(0.8, 0.1), (0.95, 0.03), (0.5, 0.3), (1.2, 0.2)]
    res = fit_mle([truncnorm.sample(m, s, 20000, rng=rng) for m, s in truth])
    for (m, s), mu, sigma in zip(truth, res.mu, res.sigma):
        assert mu == pytest.approx(m, abs=0.03)
        assert sigma == pytest.approx(s, rel=0.05)


def test_degenerate_peeks_are_flagged_never_nan():
    res = fit_mle([[0.7], [0.9, 0.9, 0.9], [1.0, 1.0], [0.0, 0.0, 0.0], [], [0.99, 0.999, 0.98, 0.995, 1.0],
                   [0.5, 0.5 + 1e-12], [0.0, 1.0, 0.0, 1.0]])
    assert np.all(np.isfinite(res.mu)) and np.all(np.isfinite(res.sigma)) and np.all(np.isfinite(res.loglik))
    assert np.all((res.mu >= MU_BOUNDS[0]) & (res.mu <= MU_BOUNDS[1]))
    assert np.all((res.sigma >= SIGMA_BOUNDS[0]) & (res.sigma <= SIGMA_BOUNDS[1]))
    flags = [FitFlag(int(f)) for f in res.flag]
    assert FitFlag.SINGLE in flags[0] and FitFlag.SIGMA_AT_LOWER in flags[0]
    assert res.mu[0] == pytest.approx(0.7, abs=1e-6)
    assert FitFlag.ZERO_SPREAD in flags[1] and res.mu[1] == pytest.approx(0.9, abs=1e-6)
    assert FitFlag.ZERO_SPREAD in flags[2] and FitFlag.MU_AT_BOUND in flags[2]
    assert FitFlag.EMPTY in flags[4] and not res.loglik[4]
    assert FitFlag.SIGMA_AT_LOWER in flags[6]
    assert FitFlag.SIGMA_AT_UPPER in flags[7]  # spread like a uniform or wider
    assert res.flag_names()[3].startswith("zero_spread")


def test_runaway_likelihood_is_held_at_the_bound():
    # Exponential-like scores against 1: the unconstrained MLE has mu -> infinity.
    x = 1 - np.array([0.001, 0.002, 0.004, 0.01, 0.02, 0.05, 0.08, 0.15])
    res = fit_mle([x])
    assert res.mu[0] == pytest.approx(MU_BOUNDS[1]) and res.flag[0] & FitFlag.MU_AT_BOUND
    wider = fit_mle([x], mu_bounds=(-1, 60))
    assert wider.loglik[0] > res.loglik[0]  # the box, not the optimiser, is what held it


def test_map_pulls_towards_prior_and_handles_empty():
    res = fit_map([[0.6, 0.62], []], prior_mu=[0.9, 0.8], prior_sigma=[0.1, 0.05], prior_width=[0.05, 0.05])
    assert 0.6 < res.mu[0] < 0.9
    assert res.mu[1] == pytest.approx(0.8, abs=1e-6) and res.sigma[1] == pytest.approx(0.05, abs=1e-6)
    tight = fit_map([[0.6, 0.62]], 0.9, 0.1, prior_width=(1e-4, 1e-4))
    assert tight.mu[0] == pytest.approx(0.9, abs=1e-3)


def test_ragged_batch_equals_one_by_one():
    problems = _random_problems(30, 4)
    batch = fit_mle(problems)
    for i, x in enumerate(problems):
        one = fit_mle([x])
        assert one.mu[0] == pytest.approx(batch.mu[i], abs=1e-7)
        assert one.sigma[0] == pytest.approx(batch.sigma[i], rel=1e-6)


def test_two_d_input_equals_list_input():
    x = np.random.default_rng(0).uniform(0.5, 1.0, (5, 6))
    a, b = fit_mle(x), fit_mle(list(x))
    np.testing.assert_allclose(a.mu, b.mu)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.floats(0.0, 1.0), min_size=0, max_size=12), min_size=1, max_size=6))
def test_never_nan_on_any_scores(samples):
    res = fit_mle(samples)
    assert np.all(np.isfinite(res.mu)) and np.all(np.isfinite(res.sigma)) and np.all(np.isfinite(res.loglik))
    m = fit_map(samples, 0.9, 0.1, 0.1)
    assert np.all(np.isfinite(m.mu)) and np.all(np.isfinite(m.sigma))


@pytest.mark.parametrize("bad", [[[0.5, 1.2]], [[0.5, float("nan")]], [[-0.1]]])
def test_bad_scores_name_their_place(bad):
    with pytest.raises(InputError, match=r"samples\[0\]\[\d\]"):
        fit_mle(bad)


def test_moments_to_params_round_trip():
    mu, sigma = np.array([0.8, 0.95, 0.5, 1.1]), np.array([0.1, 0.05, 0.2, 0.15])
    mean, std = truncnorm.mean_std(mu, sigma)
    res = moments_to_params(mean, std)
    np.testing.assert_allclose(res.mu, mu, atol=1e-6)
    np.testing.assert_allclose(res.sigma, sigma, rtol=1e-5)
    assert not res.flag.any()
    # Moments no truncated normal in the box attains: nearest one, flagged.
    edge = moments_to_params(0.79, 0.19)
    assert edge.flag & FitFlag.MU_AT_BOUND
    with pytest.raises(InputError, match="moments"):
        moments_to_params(1.2, 0.1)


def test_flag_names_of_scalar_and_shaped_fits():
    # A scalar fit (moments_to_params of two numbers) used to raise "iteration over a 0-d array".
    assert moments_to_params(0.79, 0.19).flag_names() == ["mu_at_bound"]
    assert moments_to_params(0.7, 0.1).flag_names() == ["ok"]
    grid = moments_to_params(np.full((2, 3), 0.7), 0.1)
    assert grid.flag_names() == ["ok"] * 6 and len(grid) == 6


@pytest.mark.parametrize("fit", [fit_mle, lambda s: fit_map(s, 0.8, 0.1)])
def test_a_flat_list_of_scores_is_refused_not_read_as_many_problems(fit):
    # fit_mle([0.9, 0.95, 0.99]) silently fitted three one-sample problems.
    with pytest.raises(InputError, match=r"for one problem pass \[scores\]") as info:
        fit([0.9, 0.95, 0.99])
    assert info.value.where == "samples[0]"
    with pytest.raises(InputError) as info:
        fit(np.array([0.9, 0.95, 0.99]))
    assert info.value.where == "samples"
    one = fit([[0.9, 0.95, 0.99]])
    assert len(one) == 1 and one.n[0] == 3
