"""Replay memory that does not grow with the text (issue 14 item 7): a pool is read in one pass into
compact arrays, and the statistics never hold a (resamples x problems) table. The numbers are the
same as before: the resamples are the documented draws, block by block."""

from __future__ import annotations

import json
import os
import tracemalloc

import numpy as np
import pytest

from optscale.replay import Baseline, Bootstrap, FixedCurves, ReplayOutcome, policy_stats, read_pool_arrays
from optscale.replay.metrics import _ratio_interval


def traced_peak(fn):
    """``fn()`` and the most memory (bytes) it held at once beyond what was held before, per tracemalloc."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        result = fn()
        return result, tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


def test_reading_a_pool_keeps_numbers_not_text(tmp_path):
    path = tmp_path / "texts.jsonl"
    rng = np.random.default_rng(0)
    with path.open("w") as out:
        for i in range(120):
            samples = [{"answer": str(k % 3), "score": float(rng.random()), "tokens": 100 + k, "correct": k % 3 == 0,
                        "text": f"step {k} " * 1500, "step_scores": [0.5] * 50} for k in range(16)]
            out.write(json.dumps({"id": f"p{i}", "question": "q" * 200, "answer": "0", "samples": samples}) + "\n")
    size = os.path.getsize(path)
    arrays, peak = traced_peak(lambda: read_pool_arrays(path))
    assert arrays.score.shape == (120, 16) and arrays.correct[:, ::3].all()
    assert peak < 0.1 * size, (peak, size)  # one line at a time, then 21 bytes per sample


class _Policy:
    name, n_max, alpha, s_min = "stub", 16, 0.9, 0.9

    def describe(self):
        return "stub"

    def model_dump(self, exclude=()):
        return {}


def test_statistics_do_not_hold_a_table_of_resamples_by_problems():
    """Old code: the bootstrap's counts (resamples x problems bytes) and the promise's interval (two
    int64/float64 tables of 1,000 x problems) grew to ~18 KB per problem, 3x a pool line of 64 samples."""
    p, n, rng = 12_000, 8, np.random.default_rng(1)
    tokens = np.cumsum(rng.uniform(100, 200, (n, p)), axis=0)
    curves = FixedCurves(("best",), rng.random((1, n, p)), tokens, np.repeat(np.arange(1.0, n + 1)[:, None], p, 1))
    outcome = ReplayOutcome(rng.random(p), tokens[3], np.full(p, 4.0, dtype=np.float32), 10,
                            hits=rng.integers(0, 11, p).astype(np.float32), capped=np.zeros(p, dtype=np.float32),
                            hits_uncapped=rng.integers(0, 11, p).astype(np.float32))
    policy = _Policy()
    policy.n_max = n
    stats, peak = traced_peak(lambda: policy_stats([policy], [outcome], Baseline(curves, 2000, 0)))
    assert stats[0].achieved_ci_low <= stats[0].achieved_uncapped <= stats[0].achieved_ci_high
    assert peak < 3_000 * p, peak / p  # a block of 256 resamples of float weights: 2 KB per problem


def test_bootstrap_resamples_are_the_seeded_draws_in_blocks():
    """What replays always used: resample b counts ``bincount(rng.integers(0, P, P))``, drawn in order from
    the seed, and means are those counts (as floats, 256 resamples at a time) times the values."""
    p, resamples = 37, 600
    rng = np.random.default_rng(5)
    counts = np.stack([np.bincount(rng.integers(0, p, size=p), minlength=p) for _ in range(resamples)])
    values = np.random.default_rng(2).random((p, 3))

    def means(v):
        return np.concatenate([counts[s:s + 256].astype(float) @ v for s in range(0, resamples, 256)]) / p

    boot = Bootstrap(p, resamples, 5)
    assert np.array_equal(boot.counts, counts)
    assert np.array_equal(boot.means(values), means(values))
    acc, tok = boot.means_of(values, values[:, 0])
    assert np.array_equal(acc, means(values)) and np.array_equal(tok, means(values[:, 0]))


@pytest.mark.parametrize("size", [1, 63, 64, 65, 500])
def test_the_promise_interval_is_the_all_at_once_draw(size):
    rng = np.random.default_rng(3)
    hits, trials = rng.integers(0, 5, size).astype(float), np.full(size, 5.0)
    weights = np.random.default_rng(7).multinomial(size, np.full(size, 1.0 / size), 1000)
    ratio = (weights @ hits) / (weights @ trials)
    want = (float(np.percentile(ratio, 2.5)), float(np.percentile(ratio, 97.5)))
    assert _ratio_interval(hits, trials, seed=7) == want
