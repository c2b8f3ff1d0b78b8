"""``policy fit`` tunes itself (issue 15): cross-validated choice, the margin feature, a budget that lands
on its share by mixing two lambdas per problem (the same in replay and live), and clear refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import check_live_equals_replay, run_cli, toy_pool
from optscale.errors import InputError
from optscale.policies import make_policy, select
from optscale.policies.common import score_or_zero
from optscale.policies.learned import fit_table, table_states
from optscale.policies.learned.cv import fit_auto, parse_features
from optscale.replay import build_batch
from test_learned import relabel


@pytest.fixture(scope="module")
def calib():
    return build_batch(toy_pool(problems=150, samples=16, seed=21), orders=2, seed=1)


def spent_share(table, batch, n_max):
    d = make_policy("learned", n_max, table=table).replay(batch)
    used = np.arange(n_max)[None, None, :] < d.n_used[..., None]
    return np.where(used, batch.tokens[:, :, :n_max], 0).sum(axis=2).mean() / batch.tokens[:, :, :n_max].sum(
        axis=2).mean()


@pytest.mark.parametrize("budget", [0.2, 0.3, 0.45, 0.9])
@pytest.mark.parametrize("design", ["coarse", "answers only", "default"])
def test_a_budget_lands_within_two_percent_of_its_share_on_calibration(calib, budget, design):
    from dataclasses import replace

    # Coarse tables have few states, so a single lambda jumps past the budget (0.45 -> 0.29 before).
    batch, rule, kwargs = {
        "coarse": (calib, "best", {"bins": 1, "agree_cap": 1, "length_bins": 1, "consensus": False}),
        "answers only": (replace(calib, score=np.full(calib.score.shape, np.nan), has_scores=False, cache={}),
                         "majority", {"length_bins": 1}),
        "default": (calib, "best", {}),
    }[design]
    table = fit_table(batch, 16, rule, budget=budget, strict=False, **kwargs)  # scored in-sample on purpose
    share = spent_share(table, batch, 16)
    assert budget * 0.98 <= share <= budget * (1 + 1e-9), (share, table.lam, table.mix_lam, table.mix_share)
    assert table.fitted["share_of_bon"] == pytest.approx(share)


def test_a_mixed_table_decides_alike_live_and_in_replay_and_after_a_round_trip(calib, tmp_path):
    table = fit_table(calib, 16, "weighted", budget=0.3)
    assert table.mix_stop is not None and 0 < table.mix_share < 1
    problems = relabel(toy_pool(problems=40, samples=16, seed=22), "mixheld")
    policy = make_policy("learned", 16, table=table)
    check_live_equals_replay(policy, problems)
    mixed = table.mixed([p.id for p in problems], [p.question for p in problems])
    assert 0 < mixed.sum() < len(problems)  # both lambdas are in use
    back = make_policy("learned", 16, table=str(table.save(tmp_path / "t.json")))
    batch = build_batch(problems, orders=2, seed=3)
    np.testing.assert_array_equal(back.replay(batch).n_used, policy.replay(batch).n_used)
    np.testing.assert_array_equal(back.stopping_table().mix_stop, table.mix_stop)


def test_the_margin_feature_is_the_leaders_count_minus_the_runner_ups(calib):
    score, code, tokens = calib.flat("score"), calib.flat("answer"), calib.flat("tokens")
    for rule in ("best", "majority"):
        states, chosen = table_states(score, code, tokens, 16, np.zeros(0), 0, False, np.zeros(0), rule, margin_cap=30)
        for row in range(0, score.shape[0], 37):
            for n in (1, 5, 16):
                lead = select(rule, score_or_zero(score[row:row + 1]), code[row:row + 1], np.array([n]))[0]
                counts = np.bincount(code[row, :n][code[row, :n] >= 0], minlength=1)
                mine = counts[code[row, lead]] if lead >= 0 and code[row, lead] >= 0 else 0
                others = np.delete(counts, code[row, lead]) if lead >= 0 and code[row, lead] >= 0 else counts
                assert states[row, n - 1] == max(mine - (others.max() if others.size else 0), 0), (rule, row, n)
    table = fit_table(calib, 8, "majority", lam=1e-4, margin_cap=3, agree_cap=0, bins=1, consensus=False,
                      length_bins=1)
    check_live_equals_replay(make_policy("learned", 8, table=table),
                             relabel(toy_pool(problems=20, samples=8, seed=23, ragged=True), "marginheld"))


def test_an_n_only_table_stops_at_the_best_fixed_n(calib):
    lam = 2e-4
    table = fit_table(calib, 16, "best", lam=lam, bins=1, agree_cap=0, consensus=False, length_bins=1)
    flat = table.stop.reshape(16, -1)
    assert flat.shape[1] == 1
    n_stop = int(np.argmax(flat[:, 0])) + 1
    score, code, tokens = calib.flat("score"), calib.flat("answer"), calib.flat("tokens")
    value = [select("best", score_or_zero(score), code, np.full(score.shape[0], n)) for n in range(1, 17)]
    acc = [np.take_along_axis(calib.flat("correct"), v[:, None], axis=1).mean() for v in value]
    objective = [acc[n] - lam * tokens[:, :n + 1].sum(axis=1).mean() for n in range(16)]
    assert n_stop == int(np.argmax(objective)) + 1


def test_auto_fit_records_its_choice_and_cross_validated_estimate(calib):
    table = fit_auto(calib, 8, budget=0.4, folds=3)
    cv = table.fitted["cross_validated"]
    assert cv["folds"] == 3 and cv["candidates"] > 20
    assert cv["gain_ci"][0] <= cv["gain"] <= cv["gain_ci"][1]
    assert cv["chosen"].startswith(f"select={table.select}, features=")
    assert cv["summary"].startswith("expected on new problems like these") and "pp over" in cv["summary"]
    assert 0 < cv["token_share"] <= 0.4 + 1e-9
    assert table.features and set(table.features) <= {"score", "agree", "margin", "consensus", "length", "n"}


def test_fit_auto_picks_only_candidates_the_pool_supports(calib):
    from dataclasses import replace

    blind = replace(calib, score=np.full(calib.score.shape, np.nan), has_scores=False, cache={})
    table = fit_auto(blind, 8, budget=0.5, folds=2, strict=False)
    assert table.select == "majority" and not table.uses_scores
    with pytest.raises(InputError) as info:
        fit_auto(blind, 8, select="best", budget=0.5)
    assert info.value.where == "select"


def test_cli_fit_defaults_to_the_auto_search_and_prints_its_estimate(tmp_path, monkeypatch, capsys):
    from optscale.pools import write_pool
    from optscale.simulate import simulate_pool

    pool = tmp_path / "calib.jsonl"
    write_pool(pool, simulate_pool(150, 16, seed=8))
    out = tmp_path / "t.json"
    code, stdout, err = run_cli(["policy", "fit", pool, "--n-max", 16, "--budget", 0.4, "--folds", 3, "--orders", 1,
                                 "--out", out], monkeypatch, capsys)
    assert code == 0, err
    text = " ".join(stdout.split())
    assert "expected on new problems like these (3-fold cross-validation): accuracy" in text, text
    data = json.loads(out.read_text())
    assert data["fitted"]["cross_validated"]["folds"] == 3 and data["settings"]["features"]
    code, stdout, err = run_cli(["policy", "fit", pool, "--n-max", 16, "--lambda", 0, "--features", "agree,margin",
                                 "--select", "majority", "--folds", 2, "--orders", 1, "--out", out],
                                monkeypatch, capsys)
    assert code == 0, err
    data = json.loads(out.read_text())
    assert data["settings"]["features"] == ["agree", "margin"] and data["settings"]["margin_cap"] > 0


@pytest.mark.parametrize("extra, flag, words", [
    (["--folds", 50], "--folds", "50 folds need at least 50 calibration problems; the pool has 20"),
    (["--folds", 1], "--folds", "from 2"),
    (["--features", "score,magic"], "--features", "unknown feature 'magic'"),
    (["--features", ""], "--features", "unknown feature"),
])
def test_cli_fit_refuses_bad_folds_and_features_keeping_what_was_written(tmp_path, monkeypatch, capsys, extra, flag,
                                                                         words):
    rows = [{"id": p.id, "question": p.question, "answer": p.answer,
             "samples": [{"answer": s.answer, "score": s.score, "tokens": s.tokens, "correct": s.correct}
                         for s in p.samples]} for p in relabel(toy_pool(problems=20, samples=8, seed=4), "bad")]
    pool = tmp_path / "calib.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "t.json"
    out.write_text("an older table")
    code, _, err = run_cli(["policy", "fit", pool, "--n-max", 8, "--budget", 0.5, *extra, "--out", out], monkeypatch,
                           capsys)
    assert code == 2 and err.startswith(f"error: {flag}: ") and words in err, err
    assert out.read_text() == "an older table"


def test_parse_features():
    assert parse_features("auto") is None and parse_features("n") == ()
    assert parse_features("score, margin,score") == ("score", "margin")
    with pytest.raises(InputError) as info:
        parse_features("n,score")
    assert info.value.where == "features"


def test_a_search_whose_best_candidate_does_not_beat_the_envelope_falls_back_to_n_only(calib, monkeypatch):
    import optscale.policies.learned.cv as cv

    monkeypatch.setattr(cv._Result, "gain", lambda self, env: -0.01)  # nothing beats the folds' envelope
    table = fit_auto(calib, 8, budget=0.4, folds=3, strict=False)
    assert table.features == ("n",) and table.bins == 1 and table.agree_cap == 0 and not table.consensus
    assert table.stop.reshape(8, -1).shape[1] == 1 and "features=n only" in table.fitted["cross_validated"]["chosen"]
    explicit = fit_auto(calib, 8, budget=0.4, folds=3, features="score,agree", select="best", strict=False)
    assert explicit.features == ("score", "agree")  # an explicit design is kept


def test_the_demo_fits_learned_on_its_calibration_half_and_replays_it(tmp_path):
    from optscale.demo import run_demo

    summary = run_demo(tmp_path / "demo", problems=40, samples=8, orders=1, seed=0)
    rows = [s for _, stats in summary.tables for s in stats if s.policy == "learned"]
    assert len(rows) == 1 and rows[0].n_max == 8 and rows[0].problems == 20  # the held-out half only
    assert not any("learned" in note for note in summary.notes)
    assert "`learned` is fitted per budget on the calibration problems" in (tmp_path / "demo" / "README.md").read_text()
