"""One source of defaults (optscale.defaults), one checker of plain values (optscale.checks), and a
fixed-N envelope that takes every registered selection rule."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import run_cli, toy_pool
from optscale import defaults
from optscale.checks import check_int, check_n_max, check_number, check_seed, is_number
from optscale.errors import InputError
from optscale.pools import PoolProblem, write_pool


@pytest.fixture
def pool_file(tmp_path):
    path = tmp_path / "toy.jsonl"
    write_pool(path, [PoolProblem.model_validate({
        "id": p.id, "question": p.question, "answer": p.answer,
        "samples": [{"answer": s.answer, "score": s.score, "tokens": s.tokens, "correct": s.correct}
                    for s in p.samples],
    }) for p in toy_pool(problems=12, samples=16)])
    return path


def test_replay_run_and_serve_default_to_the_same_policy(pool_file, monkeypatch, capsys):
    """A replay without --policy predicts what a run or the server does without one."""
    from optscale.live.config import RunConfig
    from optscale.serve.settings import ServeConfig

    code, out, err = run_cli(["replay", pool_file, "--orders", 2, "--json"], monkeypatch, capsys)
    assert code == 0, err
    replayed = json.loads(out)
    assert replayed["policy"] == RunConfig.model_fields["policy"].default == ServeConfig.model_fields["policy"].default
    assert replayed["n_max"] == RunConfig.model_fields["n_max"].default == defaults.N_MAX
    # the server's budget differs on purpose, and says so where it is set
    assert ServeConfig.model_fields["n_max"].default == defaults.SERVE_N_MAX


def test_sweep_and_demo_tune_the_same_budgets_on_one_grid(monkeypatch, capsys):
    from optscale import demo
    from optscale.cli.app import load_command

    params = {p.name: p.default for p in load_command("sweep").params}
    assert [int(b) for b in params["n_max"].split(",")] == list(demo.BUDGETS)
    assert params["policy"] == defaults.POLICY
    # the demo's grids are a coarser part of the sweep's own, never other values
    code, out, _ = run_cli(["sweep", "--help"], monkeypatch, capsys)
    shown = " ".join(out.split())
    for grid, demo_grid in ((defaults.S_MIN_GRID, demo.S_MIN_GRID), (defaults.ALPHA_GRID, demo.ALPHA_GRID)):
        assert set(demo_grid) <= set(grid)
        assert ",".join(f"{v:g}" for v in grid) in shown.replace(", ", ",")


def test_firstpass_stops_at_optscales_target_score():
    from optscale.policies import make_policy
    from optscale.policies.optscale import DEFAULT_TARGET

    assert make_policy("firstpass", 8).t == make_policy("optscale", 8).s_min == DEFAULT_TARGET[0]


@pytest.mark.parametrize("value", [True, False, 2.0, "3", None, np.float64(2.0)])
def test_integers_refuse_booleans_floats_and_text(value):
    with pytest.raises(InputError) as info:
        check_int(value, "orders", 1, 10)
    assert info.value.where == "orders"


def test_checkers_accept_numpy_and_name_the_place():
    assert check_int(np.int64(3), "k", 1, 5) == 3 and type(check_int(np.int64(3), "k")) is int
    assert check_number(np.float32(0.5), "t", 0, 1) == 0.5
    for bad in (float("nan"), float("inf"), True, "0.5", 1.5):
        with pytest.raises(InputError, match=r"^file:3 field t: must be a number in \[0, 1\]"):
            check_number(bad, "file:3 field t", 0, 1)
    assert is_number(float("inf"), finite=False) and not is_number(float("inf")) and not is_number(False)
    with pytest.raises(InputError, match="from 1 to 65,536"):
        check_n_max(65_537)


def test_one_seed_rule_everywhere():
    """Replay, sweep and the predictor's folds take the same seeds (they had two ranges)."""
    from optscale.predictor.base import check_seed as predictor_seed
    from optscale.replay import build_batch, check_seed as replay_seed

    problems = toy_pool(problems=3, samples=4)
    assert build_batch(problems, orders=2, seed=2**32 - 1).shape[1] == 2
    for check in (check_seed, replay_seed, predictor_seed):
        assert check(np.uint32(2**32 - 1)) == 2**32 - 1
        for bad in (-1, 2**32, True, 1.0):
            with pytest.raises(InputError, match=r"^seed: must be an integer from 0 to 2\*\*32-1"):
                check(bad)
    with pytest.raises(InputError) as info:
        build_batch(problems, orders=2, seed=2**40)
    assert info.value.where == "seed"


def test_a_new_selection_rule_enters_the_fixed_n_envelope(monkeypatch):
    """The envelope's rules are the selection registry's; a rule without a fast path runs its own code."""
    from optscale.policies.selection import SELECTIONS
    from optscale.replay import RULES, build_batch
    from optscale.replay.metrics import fixed_curves

    assert RULES == tuple(SELECTIONS.names())

    def last(score, answer, used):  # the last sample drawn
        return np.where(used.any(axis=1), used.sum(axis=1) - 1, -1)

    monkeypatch.setitem(SELECTIONS._entries, "last", last)
    batch = build_batch(toy_pool(problems=20, samples=8, ragged=True), orders=3, seed=4)
    curves = fixed_curves(batch, rules=("best", "last", "weighted"))
    p, r, n = batch.shape
    correct, available = batch.flat("correct"), batch.flat_available()
    for j in range(n):
        for k, rule in enumerate(curves.rules):
            used = np.arange(n)[None, :] < np.minimum(j + 1, available)[:, None]
            pos = SELECTIONS.get(rule)(np.nan_to_num(batch.flat("score")), batch.flat("answer"), used)
            hit = (pos >= 0) & correct[np.arange(len(pos)), np.maximum(pos, 0)]
            assert np.allclose(curves.accuracy[k, j], hit.reshape(p, r).mean(axis=1)), (rule, j)
