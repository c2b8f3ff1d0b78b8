"""The calibrated envelope: the fixed methods a calibration set puts on its envelope, measured on held-out
problems (the mission's honest baseline: settings chosen on calibration data), against a brute-force
reference; never above the held-out (hindsight) envelope; equal to it when both are the same problems;
and what a table at the fixed N of its budget lands on."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from conftest import toy_pool
from optscale.policies import make_policy
from optscale.policies.learned.cv import fit_auto
from optscale.replay import Baseline, build_batch, fixed_curves, outcome_of, policy_stats, split_problems, subset


def halves(seed=0, problems=60, samples=12):
    batch = build_batch(toy_pool(problems=problems, samples=samples, seed=seed), orders=2, seed=seed)
    calib, held = split_problems(problems, 0.5, seed)
    return subset(batch, calib), subset(batch, held)


def brute_path(cal, test, n_max, t):
    """The definition, by loops: the calibration's hull methods (best rule at each hull N), measured on
    ``test``, joined in N order, at tokens ``t``."""
    cc, tc = fixed_curves(cal), fixed_curves(test)
    acc_c, tok_c = cc.accuracy[:, :n_max].mean(axis=2), cc.tokens[:n_max].mean(axis=1)
    best_rule = acc_c.argmax(axis=0)
    top = acc_c.max(axis=0)
    hull = []  # vertices of the least concave non-decreasing majorant, by the definition: above every chord
    for i in range(int(np.argmax(top)) + 1):
        if i > 0 and tok_c[i] <= tok_c[i - 1]:
            continue
        above = all(top[i] > top[a] + (top[b] - top[a]) * (tok_c[i] - tok_c[a]) / (tok_c[b] - tok_c[a])
                    for a in range(i) for b in range(i + 1, len(top)) if tok_c[a] < tok_c[i] < tok_c[b] and b <= int(
                        np.argmax(top)))
        if above:
            hull.append(i)
    xs = [tc.tokens[i].mean() for i in hull]
    ys = [tc.accuracy[best_rule[i], i].mean() for i in hull]
    if t < xs[0] * (1 - 1e-12):
        return float("nan")
    for k in range(len(xs) - 1):
        if xs[k] <= t <= xs[k + 1]:
            return ys[k] + (ys[k + 1] - ys[k]) * (t - xs[k]) / (xs[k + 1] - xs[k])
    return ys[-1] if t >= xs[-1] else ys[0]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_calibrated_envelope_matches_its_definition(seed):
    cal, test = halves(seed)
    base, calib = Baseline(fixed_curves(test), 50, seed), Baseline(fixed_curves(cal), 50, seed)
    for n_max in (4, 12):
        path = base.calibrated(n_max, calib)
        lo, hi = path.tokens[0], path.tokens[-1]
        for t in np.linspace(lo * 0.8, hi * 1.2, 17):
            assert path.at(t)[0] == pytest.approx(brute_path(cal, test, n_max, t), nan_ok=True), (n_max, t)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n_max=st.integers(1, 10), frac=st.floats(0.0, 1.5))
def test_it_is_never_above_the_hindsight_envelope_and_equals_it_on_the_same_problems(seed, n_max, frac):
    cal, test = halves(seed % 50, problems=30, samples=10)
    base, calib = Baseline(fixed_curves(test), 20, seed), Baseline(fixed_curves(cal), 20, seed)
    env = base.envelope(n_max)
    t = env.tokens[0] + frac * (env.tokens[-1] - env.tokens[0])
    hindsight = base.at(n_max, t)["envelope_accuracy_same_tokens"]
    assert base.calibrated(n_max, calib).at(t)[0] <= hindsight + 1e-12
    assert base.calibrated(n_max, base).at(t)[0] == pytest.approx(hindsight)


def test_policy_stats_report_the_gain_over_it_with_a_paired_interval():
    cal, test = halves(3, problems=80)
    pols = [make_policy("bon", 8, select="majority"), make_policy("sc", 8)]
    outs = [outcome_of(test, p.replay(test), p) for p in pols]
    base, calib = Baseline(fixed_curves(test), 200, 0), Baseline(fixed_curves(cal), 200, 0)
    plain = policy_stats(pols, outs, base)
    both = policy_stats(pols, outs, base, calibration=calib)
    for a, s, o in zip(plain, both, outs):
        assert np.isnan(a.gain_vs_calibrated_envelope)  # only where a calibration is given
        assert s.gain_vs_envelope == a.gain_vs_envelope  # the hindsight gain is unchanged
        want = brute_path(cal, test, 8, float(o.tokens.mean()))
        assert s.calibrated_envelope_accuracy_same_tokens == pytest.approx(want)
        assert s.gain_vs_calibrated_envelope == pytest.approx(s.accuracy - want)
        assert s.gain_vs_calibrated_envelope >= s.gain_vs_envelope - 1e-12
        # the interval by loops: each resample of the held-out problems (the baseline's own, so paired)
        counts = base.bootstrap.counts.astype(float) / len(o.correct)
        path = base.calibrated(8, calib)
        cc, tc = fixed_curves(cal), fixed_curves(test)
        hull = [i for i in range(8) if any(np.isclose(tc.tokens[i].mean(), x) for x in path.tokens)]
        rule = cc.accuracy[:, :8].mean(axis=2).argmax(axis=0)
        vy = counts @ np.stack([tc.accuracy[rule[i], i] for i in hull], axis=1)
        vx = counts @ np.stack([tc.tokens[i] for i in hull], axis=1)
        acc, tok = counts @ o.correct, counts @ o.tokens
        gains = [a - (np.interp(t, x, y) if t >= x[0] else np.nan) for a, t, x, y in zip(acc, tok, vx, vy)]
        gains = np.array(gains)[np.isfinite(gains)]
        want_lo, want_hi = np.quantile(gains, [0.025, 0.975])
        assert s.gain_vs_calibrated_envelope_ci_low == pytest.approx(want_lo)
        assert s.gain_vs_calibrated_envelope_ci_high == pytest.approx(want_hi)
    with pytest.raises(ValueError, match="rules"):
        answers_only = Baseline(fixed_curves(cal, rules=("majority",)), 10, 0)
        base.calibrated(8, answers_only)


def test_a_table_at_the_fixed_n_of_its_budget_lands_on_the_calibrated_envelope():
    # A budget that is exactly the calibration cost of an N on the calibration hull: the n-only table stops
    # every problem at that N, and held out it sits exactly on the calibrated envelope of its rule (a vertex).
    from optscale.policies.learned.fit import fixed_path
    from optscale.policies.selection import Selection

    majority = lambda b: Baseline(fixed_curves(b, rules=("majority",)), 100, 0)  # noqa: E731
    checked = 0
    for seed in (4, 5, 6):
        cal, test = halves(seed, problems=200, samples=16)
        c = fixed_curves(cal, rules=("majority",))
        cost, acc = c.tokens.mean(axis=1), c.accuracy[0].mean(axis=1)
        vertices = {i + 1 for i in majority(cal).envelope(16).hull}
        for n in fixed_path(Selection.MAJORITY, cost, acc):
            if n == 1 or n not in vertices:  # an N of the table's path that is also a vertex of the envelope
                continue
            table = fit_auto(cal, 16, select="majority", features="n", budget=float(cost[n - 1] / cost[-1]))
            pol = make_policy("learned", 16, table=table)
            assert set(np.unique(pol.replay(test).n_used)) == {n}
            s = policy_stats([pol], [outcome_of(test, pol.replay(test), pol)], majority(test),
                             calibration=majority(cal))[0]
            assert s.gain_vs_calibrated_envelope == pytest.approx(0.0, abs=1e-12), (seed, n)
            assert s.gain_vs_envelope <= 1e-12
            checked += 1
    assert checked >= 3


def test_the_report_table_adds_its_column_only_where_it_was_measured():
    from optscale.replay import replay_policies
    from optscale.report import envelope_table

    cal, test = halves(5)
    pols = [make_policy("bon", 4, select="majority"), make_policy("sc", 8)]
    plain = replay_policies(test, pols, seed=1, bootstrap=50)
    tuned = replay_policies(test, pols, seed=1, bootstrap=50, calibration=cal)
    rows = lambda res: [{"dataset": "toy", **s.as_dict()} for s in res.stats]  # noqa: E731
    assert "calibrated envelope" not in envelope_table(rows(plain))
    text = envelope_table(rows(tuned))
    header, _, *body = text.splitlines()
    assert header.endswith("Gain vs calibrated envelope (pp) [95% paired] |") and len(body) == 2
    for line, s in zip(body, tuned.stats):
        assert line.count("|") == header.count("|")
        assert f"{100 * s.gain_vs_calibrated_envelope:+.1f}" in line.split("|")[-2]
