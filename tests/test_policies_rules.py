"""Answer and threshold rules (firstpass, agree, deepconf, boinf): live == replay, and each rule's behaviour."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import special

from conftest import check_live_equals_replay, shared_data, toy_pool
from optscale.errors import InputError
from optscale.policies import Decision, Sample, make_policy
from optscale.policies.boinf import bayes_factor, mode_probability_complement
from optscale.policies.deepconf import leading_share
from optscale.replay import build_batch

CASES = [
    ("firstpass", {}), ("firstpass", {"t": 0.7}), ("firstpass", {"t": 0.85, "select": "majority"}),
    ("agree", {}), ("agree", {"t": 0.6}), ("agree", {"t": 0.75, "k": 3, "select": "best"}), ("agree", {"t": 0.0}),
    ("deepconf", {}), ("deepconf", {"warmup": 2}), ("deepconf", {"warmup": 1, "tau": 0.6}),
    ("deepconf", {"warmup": 3, "tau": 0.8, "select": "majority"}),
    ("boinf", {}), ("boinf", {"bf": 3}), ("boinf", {"bf": 10, "alpha": 0}), ("boinf", {"bf": 100, "alpha": 1.5}),
]


@pytest.mark.parametrize("name,settings_", CASES)
@pytest.mark.parametrize("n_max", [4, 8, 16])
def test_live_episodes_equal_vectorised_replay(name, settings_, n_max):
    problems = toy_pool(problems=25, samples=16, seed=n_max + 100, ragged=True, none_rate=0.2)
    check_live_equals_replay(make_policy(name, n_max, **settings_), problems)


def _problem(samples):
    """A problem from ``(score, answer)`` pairs."""
    return SimpleNamespace(id="p", question="q", answer="1", samples=[
        SimpleNamespace(score=s, answer=a, tokens=10, correct=a == "1") for s, a in samples])


def _live(policy, samples):
    """Decisions after each sample, and the outcome."""
    ep = policy.start()
    decisions = []
    for s, a in samples:
        decisions.append(ep.observe(Sample(s, a)))
        if decisions[-1] is Decision.STOP:
            break
    return decisions, ep.result()


def test_firstpass_stops_at_the_first_sample_reaching_t():
    seq = [(0.3, "2"), (0.89, "3"), (0.9, "1"), (0.99, "1")]
    decisions, out = _live(make_policy("firstpass", 8, t=0.9), seq)
    assert decisions == [Decision.CONTINUE, Decision.CONTINUE, Decision.STOP]  # 0.9 >= 0.9, 0.89 not
    assert out.chosen == 2 and out.stop_reason == "threshold"
    decisions, out = _live(make_policy("firstpass", 3, t=0.95), seq)
    assert len(decisions) == 3 and out.stop_reason == "n_max" and out.chosen == 2
    d = make_policy("firstpass", 8, t=0.9).replay(build_batch([_problem(seq)]))
    assert d.n_used[0, 0] == 3 and d.chosen[0, 0] == 2


def test_agree_stops_exactly_when_the_kth_agreeing_high_sample_arrives():
    seq = [(0.95, "1"), (0.5, "1"), (0.97, "2"), (0.99, None), (0.91, "2"), (0.92, "1"), (0.93, "1")]
    # k=2, t=0.9: "1" high at 0; "1" low at 1 does not count; "2" high at 2; None never agrees;
    # "2" high again at 4 -> stop at 5 samples
    decisions, out = _live(make_policy("agree", 16, t=0.9), seq)
    assert len(decisions) == 5 and decisions[-1] is Decision.STOP and out.stop_reason == "agree"
    assert out.answer == "2"  # weighted vote: 0.97 + 0.91 > 0.95 + 0.5
    # k=3: the third high "1" arrives at position 6 (0.95, 0.92, 0.93)
    decisions, _ = _live(make_policy("agree", 16, t=0.9, k=3), seq)
    assert len(decisions) == 7 and decisions[-1] is Decision.STOP
    # the low-scoring "1" counts once the bar is lowered
    decisions, _ = _live(make_policy("agree", 16, t=0.5), seq)
    assert len(decisions) == 2
    batch = build_batch([_problem(seq)])
    assert make_policy("agree", 16, t=0.9).replay(batch).n_used[0, 0] == 5
    assert make_policy("agree", 16, t=0.9, k=3).replay(batch).n_used[0, 0] == 7
    assert make_policy("agree", 16, t=0.9, k=4).replay(batch).n_used[0, 0] == 7  # ran out: all 7 used


def test_deepconf_weighted_share_and_warmup():
    score = np.array([[0.9, 0.1, 0.5, 0.2, 0.3]])
    code = np.array([[0, 1, -1, 0, 1]])
    # shares by hand: 0.9/0.9, 0.9/1.0, (no answer: unchanged), 1.1/1.2, 1.1/1.5
    want = [1.0, 0.9, 0.9, 1.1 / 1.2, 1.1 / 1.5]
    np.testing.assert_allclose(leading_share(score, code)[0], want)
    assert leading_share(np.array([[0.5, 0.0]]), np.array([[-1, 0]]))[0].tolist() == [0.0, 0.0]
    seq = [(0.9, "1"), (0.1, "2"), (0.5, None), (0.2, "1"), (0.3, "2")]
    # warm-up 2: share 0.9 at n=2 is below tau=0.95; n=3 still 0.9; n=4: 0.917 >= 0.91 stops
    decisions, out = _live(make_policy("deepconf", 16, warmup=2, tau=0.91), seq)
    assert len(decisions) == 4 and out.stop_reason == "consensus" and out.answer == "1"
    decisions, _ = _live(make_policy("deepconf", 16, warmup=1, tau=0.95), seq)
    assert len(decisions) == 1  # one confident vote is unanimous
    decisions, _ = _live(make_policy("deepconf", 16, warmup=3, tau=0.95), seq)
    assert len(decisions) == 5  # never reaches 0.95 after the warm-up


def _dirichlet_mc(counts, alpha, draws, rng):
    d = rng.dirichlet(np.array(list(counts) + [alpha]) + 1.0, draws)
    return 1.0 - float((d.argmax(axis=1) == 0).mean())


def test_boinf_mode_probability_matches_closed_form_for_two_buckets():
    # one answer seen c times against the unseen bucket: 1 - P = Pr(Beta(c+1, alpha+1) < 1/2)
    for c in (1, 2, 5, 20, 80, 160):
        for alpha in (0.0, 0.3, 2.0):
            got = np.exp(mode_probability_complement(np.array([[c]]), alpha)[0])
            np.testing.assert_allclose(got, special.betainc(c + 1, alpha + 1, 0.5), rtol=1e-9)
    # BF = K P / (1 - P) with K = 2 buckets
    q = special.betainc(4, 1.3, 0.5)
    np.testing.assert_allclose(bayes_factor(np.array([[3]]), 0.3)[0], 2 * (1 - q) / q, rtol=1e-9)


def test_boinf_mode_probability_matches_monte_carlo():
    rng = np.random.default_rng(5)
    for counts in ([3, 1], [5, 2, 1], [4, 3, 1, 1], [10, 7, 2], [6, 2, 2, 2, 1, 1]):
        want = _dirichlet_mc(counts, 0.3, 400_000, rng)
        got = np.exp(mode_probability_complement(np.array([counts]), 0.3)[0])
        assert abs(got - want) < 4 * np.sqrt(want * (1 - want) / 400_000) + 1e-4, (counts, got, want)
        k = len(counts) + 1
        np.testing.assert_allclose(bayes_factor(np.array([counts]), 0.3)[0], k * (1 - got) / got, rtol=1e-9)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 12), min_size=1, max_size=6), st.sampled_from([0.0, 0.3, 1.0]))
def test_boinf_bayes_factor_invariants(counts, alpha):
    counts = sorted(counts, reverse=True)
    row = np.array([counts + [0, 0]])
    value = bayes_factor(row, alpha)[0]
    if len(counts) > 1 and counts[0] == counts[1]:
        assert value == 0.0  # a tie never stops
        return
    assert value > 0 and bayes_factor(np.array([counts]), alpha)[0] == value  # padding changes nothing
    more = bayes_factor(np.array([[counts[0] + 1] + counts[1:]]), alpha)[0]
    assert more > value  # one more vote for the leader is more evidence


def test_boinf_stops_on_the_bayes_factor_and_ignores_no_answer():
    pol = make_policy("boinf", 80, bf=10)
    # unanimous: BF(1) = 4.06, BF(2) = 9.23, BF(3) = 19.1 -> stop at the third answer
    decisions, out = _live(pol, [(0.0, "7")] * 5)
    assert len(decisions) == 3 and out.stop_reason == "bayes_factor" and out.answer == "7"
    assert out.estimates["bayes_factor"] >= 10
    # "no answer" samples count as drawn but never vote, and nothing stops before an answer
    decisions, _ = _live(pol, [(0.0, None)] * 4 + [(0.0, "7")] * 5)
    assert len(decisions) == 7
    # a tie for the lead never stops: with alpha=5, BF([1]) = 0.133 < 0.15; at n=2 the 1-1 tie
    # would give the first answer BF 0.178, but a tie has no majority; BF([2, 1]) = 0.46 stops at n=3
    seq = [(0.0, "1"), (0.0, "2"), (0.0, "1"), (0.0, "1")]
    decisions, _ = _live(make_policy("boinf", 16, bf=0.15, alpha=5), seq)
    assert len(decisions) == 3
    # alpha=0.3, bf=4.5: BF([1]) = 4.06, tie, BF([2, 1]) = 4.70
    decisions, _ = _live(make_policy("boinf", 16, bf=4.5), seq)
    assert len(decisions) == 3
    assert make_policy("boinf", 16, bf=4.5).replay(build_batch([_problem(seq)])).n_used[0, 0] == 3


def test_settings_errors_name_the_setting():
    for name, key, value in [("firstpass", "t", 1.5), ("agree", "k", 1), ("agree", "t", -0.1),
                             ("deepconf", "tau", 0), ("deepconf", "warmup", 0), ("boinf", "bf", 0),
                             ("boinf", "alpha", -1), ("boinf", "select", "nope")]:
        with pytest.raises(InputError) as err:
            make_policy(name, 8, **{key: value})
        assert err.value.where == f"settings.{key}", (name, key)
    with pytest.raises(InputError) as err:
        make_policy("boinf", 8, tau=0.9)
    assert err.value.where == "settings.tau" and "bf" in str(err.value)
    assert not make_policy("boinf", 8).requires_scores()
    assert make_policy("deepconf", 8).requires_scores() and make_policy("agree", 8).requires_scores()


def test_boinf_on_a_real_answer_pool_saves_answers_and_keeps_the_vote():
    from optscale.pools import iter_pool

    path = shared_data("pools", "boinf", "math500_MetaStone-S1-32B.jsonl.gz")
    problems = list(iter_pool(path))[:200]
    batch = build_batch(problems, orders=3, seed=1)
    n = batch.shape[2]
    boinf = make_policy("boinf", n).replay(batch)
    vote = make_policy("sc", n).replay(batch)
    picked = lambda d: np.take_along_axis(batch.correct, np.maximum(d.chosen, 0)[..., None], 2)[..., 0] & (d.chosen >= 0)
    acc_boinf, acc_vote = picked(boinf).mean(), picked(vote).mean()
    assert boinf.n_used.mean() <= 0.25 * n, boinf.n_used.mean()
    assert acc_boinf >= acc_vote - 1 / 200, (acc_boinf, acc_vote)


def test_boinf_unique_rows_equals_numpy_unique():
    from optscale.policies.boinf import unique_rows

    rows = np.random.default_rng(3).integers(0, 4, size=(3000, 7))
    states, inverse = unique_rows(rows)
    want = np.unique(rows, axis=0)
    assert len(states) == len(want) and np.array_equal(states[inverse], rows)
    assert {tuple(r) for r in states} == {tuple(r) for r in want}


def test_boinf_replay_caches_bayes_factors_across_thresholds(pool):
    batch = build_batch(pool, orders=4, seed=2)
    loose, strict = make_policy("boinf", 16, bf=3).replay(batch), make_policy("boinf", 16, bf=300).replay(batch)
    assert (loose.n_used <= strict.n_used).all() and (loose.n_used < strict.n_used).any()
    fresh = make_policy("boinf", 16, bf=300).replay(build_batch(pool, orders=4, seed=2))
    np.testing.assert_array_equal(fresh.n_used, strict.n_used)


def _mute(problems):
    for p in problems:
        for s in p.samples:
            s.answer, s.correct = None, False
    return problems


@pytest.mark.parametrize("n_max", [4, 8])
def test_boinf_without_answers_never_stops_and_returns_nothing(n_max):
    """No extracted answer anywhere (or in one replay chunk): no stop, nothing returned, as live."""
    mute = _mute(toy_pool(problems=4, samples=8, seed=3))
    policy = make_policy("boinf", n_max)
    d = policy.replay(build_batch(mute, orders=2))
    assert (d.n_used == n_max).all() and (d.chosen == -1).all()
    check_live_equals_replay(policy, mute, orders=2)
    # Chunked: the first chunk of rows has no answers, the others do.
    mixed = _mute(toy_pool(problems=3, samples=8, seed=4)) + toy_pool(problems=6, samples=8, seed=5)
    batch = build_batch(mixed, orders=2)
    whole = policy.replay_stops(batch)[0]
    batch.cache.clear()
    chunked = policy.replay_stops(batch, chunk=2)[0]
    np.testing.assert_array_equal(chunked, whole)
    assert (chunked[:6] == n_max).all()
    check_live_equals_replay(policy, mixed, orders=2)


def test_count_arrays_stay_under_the_cell_budget_with_identical_results(monkeypatch):
    """Many distinct answers: boinf's and deepconf's per-prefix arrays are built in blocks of at
    most CELLS cells, and the blocks change nothing."""
    import optscale.policies.boinf as boinf
    import optscale.policies.deepconf as deepconf

    rng = np.random.default_rng(0)
    rows, width = 300, 24
    code = rng.integers(-1, 200, size=(rows, width))
    score = rng.random((rows, width))
    whole_share = leading_share(score, code)
    pool = [SimpleNamespace(id=f"p{i}", question=None, answer="0", samples=[
        SimpleNamespace(score=float(score[i, j]), answer=None if code[i, j] < 0 else str(code[i, j]), tokens=5,
                        correct=False) for j in range(width)]) for i in range(rows)]
    batch = build_batch(pool, orders=1)
    policy = make_policy("boinf", width, bf=5)
    whole_bf = policy._prefix_bayes_factors(batch, width, 1024).copy()
    sizes = []
    real = boinf.prefix_counts
    monkeypatch.setattr(boinf, "prefix_counts", lambda c: sizes.append(c.shape[0] * c.shape[1] * (c.max() + 1))
                        or real(c))
    monkeypatch.setattr(boinf, "CELLS", 5000)
    monkeypatch.setattr(deepconf, "CELLS", 5000)
    batch.cache.clear()
    np.testing.assert_array_equal(policy._prefix_bayes_factors(batch, width, 1024), whole_bf)
    assert len(sizes) > 1 and max(sizes) <= 5000
    import tracemalloc

    tracemalloc.start()
    small = leading_share(score, code)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    np.testing.assert_array_equal(small, whole_share)
    assert peak < rows * width * 200 * 8 / 4  # far below the one-block tally (11.5 MB)
