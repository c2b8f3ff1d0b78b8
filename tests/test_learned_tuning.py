"""Why the self-tuning ``policy fit`` lost to the fixed-N envelope, each fixed: the ``n``-only table of a
budget stays on the calibration curve's hull up to its most accurate N (two neighbouring N of
:func:`fixed_path`; before, a lambda mixture could join far ends of the whole hull), a majority vote never stops at an even N (no better in expectation than one fewer,
and dearer), and without scores the search keeps its default (the margin design, else that fixed N)
unless a candidate beats it significantly."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from conftest import toy_pool
from optscale.policies import make_policy
from optscale.policies.base import ReplayBatch
from optscale.policies.learned.cv import fit_auto
from optscale.policies.learned.fit import _features, fixed_ns, fixed_path
from optscale.policies.selection import Selection
from optscale.replay import build_batch


def stopped_at(table, batch, n_max):
    return make_policy("learned", n_max, table=table).replay(batch).n_used


def flat_pool(problems=120, n=16, seed=0):
    """Every sample of a problem gives its one answer (right or wrong): the fixed-N curve is flat, so its
    calibration hull is N = 1 alone and a budget above it can only be spent."""
    rng = np.random.default_rng(seed)
    right = rng.random(problems) < 0.6
    shape = (problems, 1, n)
    answer = np.where(right[:, None, None], 0, 1) * np.ones(shape, dtype=np.int64)
    return ReplayBatch(score=rng.random(shape), answer=answer, tokens=rng.integers(50, 150, shape).astype(float),
                       correct=np.broadcast_to(right[:, None, None], shape).copy(), available=np.full(problems, n),
                       ids=tuple(f"flat{seed}/{i}" for i in range(problems)), questions=(None,) * problems)


def test_the_fixed_n_of_a_budget_stops_at_two_neighbouring_n_on_the_fixed_curve():
    # Before: the n-only table spent the budget with a negative lambda on its calibration hull, here
    # N = 1 and N = 16 (a chord between far ends that a held-out pool need not follow).
    batch = flat_pool()
    table = fit_auto(batch, 16, select="majority", features="n", budget=0.5, strict=False)
    used = np.unique(stopped_at(table, batch, 16))
    ns = list(fixed_ns(Selection.MAJORITY, 16))  # flat: the hull is N = 1, then every N after it
    assert len(used) <= 2 and all(u in ns for u in used), used
    if len(used) == 2:
        assert ns.index(used[1]) == ns.index(used[0]) + 1, used
    assert table.fitted["share_of_bon"] == pytest.approx(0.5, rel=0.02)


def test_a_majority_vote_of_fixed_n_never_stops_at_an_even_n_below_n_max():
    batch = build_batch(toy_pool(problems=80, samples=16, seed=5), orders=2, seed=1)
    for budget in (0.2, 0.33, 0.5):
        table = fit_auto(batch, 16, select="majority", features="n", budget=budget, strict=False)
        used = np.unique(stopped_at(table, batch, 16))
        assert all(u % 2 == 1 or u == 16 for u in used), (budget, used)
    assert list(fixed_ns(Selection.MAJORITY, 6)) == [1, 3, 5, 6]
    assert list(fixed_ns(Selection.BEST, 4)) == [1, 2, 3, 4]


def test_the_fixed_path_skips_the_n_under_the_hull_up_to_the_most_accurate_n():
    cost = np.array([1.0, 2, 3, 4, 5, 6])
    assert list(fixed_path(Selection.BEST, cost, np.array([0.5, 0.6, 0.55, 0.7, 0.72, 0.73]))) == [1, 2, 4, 5, 6]
    # past the most accurate N every N stays, so that any budget can be spent
    assert list(fixed_path(Selection.BEST, cost, np.array([0.5, 0.6, 0.55, 0.7, 0.65, 0.6]))) == [1, 2, 4, 5, 6]
    # the majority vote: odd N (and n_max) only, then their hull
    acc = np.array([0.5, 0.5, 0.52, 0.52, 0.7, 0.7])
    assert list(fixed_path(Selection.MAJORITY, cost, acc)) == [1, 5, 6]


def test_a_budget_between_two_hull_n_mixes_those_two():
    batch = build_batch(toy_pool(problems=120, samples=16, seed=7), orders=2, seed=2)
    for budget in (0.15, 0.3, 0.45):
        table = fit_auto(batch, 16, select="best", features="n", budget=budget, strict=False)
        used = np.unique(stopped_at(table, batch, 16))
        cal = np.cumsum(batch.tokens[:, :, :16], axis=2).mean(axis=(0, 1))
        acc = _features(batch, 16, Selection.BEST).correct.mean(axis=0)
        path = list(fixed_path(Selection.BEST, cal, acc))
        assert set(used) <= set(path) and len(used) <= 2, (budget, used, path)
        if len(used) == 2:
            assert path.index(used[1]) == path.index(used[0]) + 1, (budget, used, path)
        assert table.fitted["share_of_bon"] == pytest.approx(budget, rel=0.02)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_without_signal_an_answer_only_search_keeps_its_default(seed):
    # Agreement and margin say nothing beyond n (correctness is a coin flip, independent of every
    # feature): a design that wins the folds by noise must not replace the default, the margin design
    # at shrink 20 or the fixed N of the budget (before: whichever of ~10 designs the noise favoured).
    rng = np.random.default_rng(seed)
    batch = flat_pool(problems=60, seed=seed)
    batch = replace(batch, score=np.full(batch.score.shape, np.nan), has_scores=False,
                    answer=rng.integers(0, 3, batch.answer.shape), correct=rng.random(batch.correct.shape) < 0.5)
    table = fit_auto(batch, 16, budget=0.4, strict=False, seed=seed)
    chosen = table.fitted["cross_validated"]["chosen"]
    assert chosen in ("select=majority, features=margin, shrink=20",
                      "select=majority, features=n only, the fixed N of the budget"), chosen


def test_a_real_signal_still_wins_over_the_fixed_n():
    # The best score tells right from wrong: a table on the score stops early and beats any fixed N.
    batch = build_batch(toy_pool(problems=200, samples=16, seed=21), orders=2, seed=1)
    table = fit_auto(batch, 16, budget=0.3, strict=False)
    cv = table.fitted["cross_validated"]
    assert "fixed N" not in cv["chosen"] and cv["gain_ci"][0] > 0, cv
