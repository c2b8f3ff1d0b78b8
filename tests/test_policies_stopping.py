"""Statistical stopping rules: Pandora's box (expected improvement) and BEACON (NIG index table)."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
from conftest import check_live_equals_replay, toy_pool
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, optimize, special, stats

from optscale.errors import InputError
from optscale.fit import fit_mle
from optscale.policies import Problem, Sample, make_policy
from optscale.policies.beacon import Beacon, index_table, student_excess
from optscale.policies.pandora import Pandora
from optscale.replay import build_batch
from optscale.stats import truncnorm
from optscale.stats.improvement import expected_improvement

# ---------------------------------------------------------------- expected improvement


def _ei_quadrature(b, mu, sigma):
    """``E[(X - b)^+]`` by adaptive quadrature of ``(x - b) f(x)``, split where the density lives."""
    if b >= 1:
        return 0.0
    lo = max(b, 0.0)
    centre = min(max(mu, 0.0), 1.0)
    cuts = {min(max(centre + k * sigma, lo), 1.0) for k in (-8, -3, -1, 0, 1, 3, 8)}
    if mu > 1:  # mass piled against 1 decays like exp(-(mu - 1)(1 - x) / sigma^2)
        cuts |= {min(max(1 - k * sigma**2 / (mu - 1), lo), 1.0) for k in (1, 5, 20)}
    edges = sorted(cuts | {lo, 1.0})
    total = sum(integrate.quad(lambda x: (x - lo) * truncnorm.pdf(x, mu, sigma), a, c,
                               epsabs=1e-15, epsrel=1e-12, limit=200)[0] for a, c in zip(edges, edges[1:]) if c > a)
    return total + max(-b, 0.0)


def test_expected_improvement_matches_quadrature():
    rng = np.random.default_rng(3)
    cases = [(0.9, 1.2, 0.18), (0.5, 2.0, 1e-3), (0.999, 2.0, 1e-3), (0.2, -1.0, 1e-3), (0.0, -1.0, 0.05),
             (0.7, 0.5, 2.0), (-0.3, 0.8, 0.1), (1.0, 0.9, 0.1), (0.95, 0.95, 1e-3)]
    cases += [(rng.uniform(-0.2, 1.05), rng.uniform(-1, 2), math.exp(rng.uniform(math.log(1e-3), math.log(2))))
              for _ in range(80)]
    b, mu, sigma = (np.array(v) for v in zip(*cases))
    got = expected_improvement(b, mu, sigma)
    want = np.array([_ei_quadrature(*c) for c in cases])
    np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-10)


def test_expected_improvement_matches_monte_carlo():
    rng = np.random.default_rng(11)
    for b, mu, sigma in [(0.8, 0.9, 0.15), (0.95, 1.3, 0.1), (0.3, 0.2, 0.4), (0.99, 2.0, 0.3)]:
        x = truncnorm.sample(mu, sigma, 400_000, rng=rng)
        gain = np.maximum(x - b, 0.0)
        se = gain.std() / math.sqrt(x.size)
        assert abs(float(expected_improvement(b, mu, sigma)) - gain.mean()) < 4 * se + 1e-12


def test_expected_improvement_limits_and_extremes():
    mean, _ = truncnorm.mean_std(1.2, 0.3)
    assert float(expected_improvement(-0.25, 1.2, 0.3)) == pytest.approx(float(mean) + 0.25, abs=1e-12)
    assert float(expected_improvement(0.0, 1.2, 0.3)) == pytest.approx(float(mean), abs=1e-12)
    # Parameters where the normal's mass on [0, 1] underflows stay finite and sensible.
    mu = np.array([2.0, 2.0, -1.0, -1.0, 0.5])
    sigma = np.array([1e-3, 1e-3, 1e-3, 1e-3, 1e-3])
    b = np.array([0.5, 0.9999, 0.0, 0.5, 0.4])
    got = expected_improvement(b, mu, sigma)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got[[0, 2, 3, 4]], [0.5, 1e-6, 0.0, 0.1], rtol=1e-3, atol=1e-12)
    assert 0 < got[1] < 1e-4


@settings(max_examples=300, deadline=None)
@given(mu=st.floats(-1, 2), log_sigma=st.floats(math.log(1e-3), math.log(2)),
       b1=st.floats(-0.5, 1.5), b2=st.floats(-0.5, 1.5))
def test_expected_improvement_invariants(mu, log_sigma, b1, b2):
    sigma = math.exp(log_sigma)
    lo, hi = min(b1, b2), max(b1, b2)
    e_lo, e_hi = (float(expected_improvement(b, mu, sigma)) for b in (lo, hi))
    assert e_lo >= 0 and e_hi >= 0
    assert e_hi <= e_lo + 1e-12 * (1 + e_lo)  # non-increasing in the best score
    assert e_lo <= max(1 - lo, 0.0) + 1e-15  # the best can rise at most to 1
    if hi >= 1:
        assert e_hi == 0.0


# ---------------------------------------------------------------- live == replay

STOPPING = [
    ("pandora", {}), ("pandora", {"refit": True, "cost": 0.003}), ("pandora", {"estimator": "map", "cost": 0.0005}),
    ("pandora", {"peek": 2, "estimator": "map", "cost": 0.003}),
    ("beacon", {}), ("beacon", {"cost": 0.02}), ("beacon", {"winsor_low": 0, "winsor_high": 0.9, "cost": 0.005}),
    ("beacon", {"alpha0": 1, "beta0": 0.01, "nu0": 2, "mu0": 0.8, "peek": 1, "cost": 0.02}),
]


@pytest.mark.parametrize("n_max", [4, 8, 16])
@pytest.mark.parametrize("name,settings", STOPPING, ids=lambda v: str(v))
def test_live_episodes_equal_vectorised_replay(name, settings, n_max):
    problems = toy_pool(problems=25, samples=16, seed=n_max, ragged=True)
    policy = make_policy(name, n_max, **settings)
    check_live_equals_replay(policy, problems)
    if n_max >= 8:  # the rule really stops at different points (the check is not vacuous)
        used = policy.replay(build_batch(problems, orders=3, seed=7)).n_used
        assert len(np.unique(used)) >= 3


@pytest.mark.parametrize("name", ["pandora", "beacon"])
def test_a_higher_cost_never_draws_more(name):
    batch = build_batch(toy_pool(problems=30, samples=16, seed=5), orders=4, seed=1)
    used = [make_policy(name, 16, cost=c).replay(batch).n_used for c in (0.0003, 0.001, 0.003, 0.01, 0.03)]
    for cheap, dear in zip(used, used[1:]):
        assert (dear <= cheap).all()
    assert used[0].mean() > used[-1].mean()


# ---------------------------------------------------------------- pandora


def _episode(policy, scores):
    ep = policy.start(Problem(id="p"))
    decisions = [ep.observe(Sample(s)) for s in scores]
    return ep, decisions


def test_pandora_stops_iff_expected_improvement_below_cost():
    scores = [0.52, 0.71, 0.63]
    fit = fit_mle(np.array([scores]))
    gain = float(expected_improvement(max(scores), fit.mu, fit.sigma)[0])
    assert 1e-3 < gain < 0.2
    stop, _ = _episode(make_policy("pandora", 8, cost=gain * 1.001), scores)
    go, _ = _episode(make_policy("pandora", 8, cost=gain * 0.999), scores)
    assert stop.result().stop_reason == "improvement" and stop.result().n_samples == 3
    assert go.result().stop_reason == "running"
    assert stop.result().estimates["improvement"] == pytest.approx(gain, rel=1e-12)
    # Fitted once after the peek: a fourth, better score lowers the improvement with the same fit.
    ep, _ = _episode(make_policy("pandora", 8, cost=gain * 0.999), [*scores, 0.9])
    later = float(expected_improvement(0.9, fit.mu, fit.sigma)[0])
    assert ep.result().estimates["improvement"] == pytest.approx(later, rel=1e-12)
    assert (ep.result().stop_reason == "improvement") == (later < gain * 0.999)


def test_pandora_waits_for_the_peek_and_map_pulls_toward_the_prior():
    _, decisions = _episode(make_policy("pandora", 8, peek=4, cost=0.5), [0.1, 0.2, 0.3, 0.4])
    assert [d.value for d in decisions] == ["continue"] * 3 + ["stop"]
    far = dict(estimator="map", prior_mu=0.2, prior_sigma=0.05, cost=1e-9)
    near = dict(far, prior_width=0.01)
    wide = dict(far, prior_width=10)
    mus = [_episode(make_policy("pandora", 8, **s), [0.8, 0.9, 0.85])[0].result().estimates["mu"] for s in (near, wide)]
    assert abs(mus[0] - 0.2) < abs(mus[1] - 0.2)


# ---------------------------------------------------------------- beacon


def _advantage(best, mu, sigma, k, horizon, cost, alpha0, nu0, nodes=(600, 300)):
    """``-cost + E[V_{k+1}] - best`` in raw units by exact recursion (no grid, no standardising).

    Expectations over the Student-t predictive use a midpoint rule in ``x`` with probability
    ``(1 - cos(pi x)) / 2`` (dense in both heavy tails); the last step is the closed form.
    """
    def quad(df, m):
        x = (np.arange(m) + 0.5) / m
        return special.stdtrit(df, (1 - np.cos(np.pi * x)) / 2), np.pi / 2 * np.sin(np.pi * x) / m

    def value(best, mu, sigma, k, depth):
        if k == horizon:
            return best
        df = 2 * alpha0 + k
        if k == horizon - 1:
            return best + np.maximum(0.0, sigma * student_excess((best - mu) / sigma, df) - cost)
        return np.maximum(best, -cost + expect(best, mu, sigma, k, depth))

    def expect(best, mu, sigma, k, depth):
        df, r = 2 * alpha0 + k, 1 / (nu0 + k + 1)
        u, w = quad(df, nodes[min(depth, len(nodes) - 1)])
        mu, sigma, best = (np.expand_dims(v, -1) for v in (mu, sigma, best))
        y = mu + sigma * u
        dev = y - mu
        mu2, sigma2 = mu + r * dev, np.sqrt((1 - r * r) / (df + 1) * (df * sigma**2 + dev**2))
        return (value(np.maximum(best, y), mu2, sigma2, k + 1, depth + 1) * w).sum(-1)

    return -cost + expect(np.asarray(best, float), np.asarray(mu, float), np.asarray(sigma, float), k, 0) - best


@pytest.mark.parametrize("k,horizon,mu,sigma", [(3, 5, 0.6, 0.1), (3, 6, -3.0, 5.0), (6, 9, 0.4, 0.02)])
def test_beacon_index_matches_brute_force_recursion(k, horizon, mu, sigma):
    alpha0, nu0 = -0.5, 0.0
    z_grid, h = index_table(horizon, alpha0, nu0)
    for z in (-0.5, 0.3, 1.2, 2.5):
        best = mu + sigma * z
        ref = optimize.brentq(lambda c: _advantage(best, mu, sigma, k, horizon, c * sigma, alpha0, nu0),
                              1e-5, 20, xtol=1e-9)
        assert float(np.interp(z, z_grid, h[k])) == pytest.approx(ref, rel=0.02), (z, ref)


def test_beacon_one_step_index_is_the_myopic_gain_exactly():
    z_grid, h = index_table(10, -0.5, 0.0)
    np.testing.assert_allclose(h[9], student_excess(z_grid, 2 * -0.5 + 9), rtol=1e-12)
    assert (h[10] == 0).all() and np.isnan(h[:3]).all()
    # E[(T - z)^+] of the Student t, checked by quadrature.
    for z, df in [(0.3, 2.0), (-1.0, 5.5), (2.0, 30.0)]:
        ref = integrate.quad(lambda u: (u - z) * stats.t.pdf(u, df), z, np.inf)[0]
        assert float(student_excess(z, df)) == pytest.approx(ref, rel=1e-9)


def test_beacon_index_monotone_in_best_score_and_horizon_and_above_myopic():
    z_grid, h = index_table(16, -0.5, 0.0)
    _, longer = index_table(24, -0.5, 0.0)
    inner = np.abs(z_grid) <= 8
    for k in range(3, 16):
        row = h[k][inner]
        assert (np.diff(row) <= 1e-9 * (1 + np.abs(row[:-1]))).all(), k  # a better best: less reason to go on
        assert (h[k] >= student_excess(z_grid, 2 * -0.5 + k) * (1 - 1e-9)).all()  # option value >= one step
        assert (longer[k] >= h[k] * (1 - 1e-9)).all()  # more samples left: worth more
    assert (h[3] > h[15]).all()


def test_beacon_table_is_cached_and_read_only():
    a, b = index_table(12, -0.5, 0.0), index_table(12, -0.5, 0.0)
    assert a[1] is b[1]
    with pytest.raises(ValueError):
        a[1][5, 5] = 0.0


def test_beacon_stops_on_no_spread_and_winsorises_low_outliers():
    ep, _ = _episode(make_policy("beacon", 16), [0.8, 0.8, 0.8])
    assert ep.result().stop_reason == "index"
    base = [0.80, 0.85, 0.90, 0.83]
    clipped = make_policy("beacon", 16, cost=1e-6)
    raw = make_policy("beacon", 16, cost=1e-6, winsor_low=0)
    sig = [_episode(p, [*base, 0.0])[0].result().estimates["sigma"] for p in (clipped, raw)]
    assert sig[0] < sig[1]


# ---------------------------------------------------------------- settings


@pytest.mark.parametrize("name,settings,where", [
    ("pandora", {"cost": 0}, "settings.cost"), ("pandora", {"estimator": "bayes"}, "settings.estimator"),
    ("pandora", {"prior_sigma": 0}, "settings.prior_sigma"), ("pandora", {"prior_width": -1}, "settings.prior_width"),
    ("pandora", {"peek": 1}, "settings.peek"), ("pandora", {"costs": 0.1}, "settings.costs"),
    ("beacon", {"peek": 2}, "settings.peek"), ("beacon", {"alpha0": 0, "peek": 1}, "settings.peek"),
    ("beacon", {"winsor_low": 0.2, "winsor_high": 0.1}, "settings.winsor_high"),
    ("beacon", {"nu0": -1}, "settings.nu0"), ("beacon", {"cost": 1.5}, "settings.cost"),
])
def test_settings_errors_name_the_setting(name, settings, where):
    with pytest.raises(InputError) as info:
        make_policy(name, 8, **settings)
    assert info.value.where == where


def test_beacon_budget_is_bounded_and_settings_are_documented():
    with pytest.raises(InputError) as info:
        make_policy("beacon", 5000)
    assert info.value.where == "n_max"
    assert make_policy("beacon", 8, alpha0=0.5, peek=1).peek == 1
    for cls in (Pandora, Beacon):
        assert all(field.description for field in cls.model_fields.values()), cls.name
        assert "arXiv" in sys.modules[cls.__module__].__doc__  # the source is cited


def test_beacon_checks_the_effective_peek_default_included():
    """alpha0 = -1 needs 4 seed scores (df = 2 alpha0 + k > 1): the default peek of 3 is refused as an
    explicit 3 is, while n_max leaves a decision to make; capped at a small n_max it decides nothing."""
    for given in ({"alpha0": -1}, {"alpha0": -1, "peek": 3}, {"alpha0": -1, "nu0": 0.5}):
        with pytest.raises(InputError) as info:
            make_policy("beacon", 8, **given)
        assert info.value.where == "settings.peek" and "at least 4" in info.value.detail, given
    policy = make_policy("beacon", 8, alpha0=-1, peek=4)
    assert np.isfinite(policy._table()[1][4]).all()
    small = make_policy("beacon", 3, alpha0=-1)  # the default peek, capped at n_max = 3: fixed BoN@3
    assert small.peek_size() == 3
    assert make_policy("beacon", 2).peek_size() == 2  # the default peek may exceed a small n_max


def test_peek_bound_applies_to_explicit_peeks_and_caps_the_defaults():
    """The shared check: an explicit peek above n_max is refused; a default peek is capped at n_max."""
    from optscale.policies import POLICIES

    with_peek = [name for name, cls in POLICIES.items() if "peek" in cls.model_fields]
    assert {"beacon", "pandora", "optscale-t"} <= set(with_peek)
    for name in with_peek:
        extra = {"priors": "population"} if name == "optscale-t" else {}
        for n_max in (1, 2, 8):
            try:
                policy = make_policy(name, n_max, **extra)
            except InputError as exc:  # a default that is invalid for other reasons at n_max 1
                assert exc.where != "settings.peek", (name, n_max, exc)
                continue
            assert 1 <= policy.peek_size() <= n_max, (name, n_max)
        with pytest.raises(InputError) as info:
            make_policy(name, 8, peek=9, **extra)
        assert info.value.where == "settings.peek" and "at most n_max (8)" in info.value.detail, name
        assert make_policy(name, 8, peek=4, **extra).peek_size() == 4
