"""Replay engine, metrics, sweeps and reports."""

import json

import numpy as np
import pytest

from conftest import toy_pool
from optscale.policies import make_policy
from optscale.replay import bon_curve, build_batch, evaluate, pareto_mask, replay_policies, split_problems, sweep
from optscale.report import baseline_table, paper_table, write_replay_report, write_sweep_report


def test_order_zero_is_pool_order_and_orders_are_permutations():
    problems = toy_pool(problems=10, samples=8, ragged=True)
    batch = build_batch(problems, orders=4, seed=1)
    for p, pr in enumerate(problems):
        k = len(pr.samples)
        np.testing.assert_allclose(batch.score[p, 0, :k], [s.score for s in pr.samples])
        for r in range(4):
            assert sorted(batch.score[p, r, :k]) == sorted(s.score for s in pr.samples)
    again = build_batch(problems, orders=4, seed=1)
    np.testing.assert_array_equal(again.score, batch.score)


def test_bon_curve_matches_direct_computation():
    problems = toy_pool(problems=30, samples=12)
    batch = build_batch(problems, orders=3, seed=2)
    curve = bon_curve(batch)
    for n in (1, 5, 12):
        best = np.argmax(batch.score[:, :, :n], axis=2)
        acc = np.take_along_axis(batch.correct, best[..., None], axis=2).mean()
        assert curve.accuracy[n - 1] == pytest.approx(acc)
        assert curve.mean_tokens[n - 1] == pytest.approx(batch.tokens[:, :, :n].sum(axis=2).mean())
    # the fixed policy evaluated through the generic path lands on the curve
    st = evaluate(batch, make_policy("bon", 5).replay(batch), make_policy("bon", 5), curve)
    assert st.accuracy == pytest.approx(curve.accuracy[4]) and st.gain_vs_bon_curve == pytest.approx(0, abs=1e-12)
    assert st.best_fixed_n >= 5 or curve.accuracy[st.best_fixed_n - 1] >= curve.accuracy[4]


def test_metrics_count_peek_tokens_and_no_answer_as_wrong():
    problems = toy_pool(problems=20, samples=16, none_rate=0.5)
    batch = build_batch(problems, orders=2)
    pol = make_policy("optscale0", 16, peek=5, s_min=0.01, alpha=0.5)  # target trivially met: stop at the peek
    d = pol.replay(batch)
    assert (d.n_used == 5).all()
    st = evaluate(batch, d, pol, bon_curve(batch))
    assert st.mean_tokens == pytest.approx(batch.tokens[:, :, :5].sum(axis=2).mean())
    sc = make_policy("sc", 1)
    d = sc.replay(batch)
    none_first = batch.answer[:, :, 0] < 0
    assert (d.chosen[none_first] == -1).all()
    st = evaluate(batch, d, sc, bon_curve(batch))
    assert st.accuracy <= 1 - none_first.mean() + 1e-12


def test_calibration_of_the_promise_on_model_conforming_scores():
    # Scores drawn from the model itself: the promise Pr(best >= s_min) >= alpha must hold.
    problems = toy_pool(problems=200, samples=64, seed=9)
    batch = build_batch(problems, orders=4, seed=0)
    for name in ("optscale0", "optscale"):
        pol = make_policy(name, 64, s_min=0.85, alpha=0.8, peek=10)
        st = evaluate(batch, pol.replay(batch), pol, bon_curve(batch))
        assert st.achieved_uncapped >= 0.8 - 0.05, name


def test_split_is_disjoint_and_seeded():
    a, b = split_problems(101, 0.5, 3)
    assert not set(a) & set(b) and len(a) + len(b) == 101
    assert np.array_equal(split_problems(101, 0.5, 3)[0], a)


def test_pareto_mask():
    tok = np.array([1.0, 2.0, 2.0, 3.0, 0.5])
    acc = np.array([0.5, 0.7, 0.6, 0.7, 0.4])
    assert pareto_mask(tok, acc).tolist() == [True, True, False, False, True]


def test_sweep_selects_on_calibration_only():
    problems = toy_pool(problems=60, samples=16)
    batch = build_batch(problems, orders=2)
    res = sweep(batch, "optscale0", [8, 16], [0.8, 0.9], [0.5, 0.9])
    assert res.calib_problems + res.test_problems == 60
    assert len(res.grid) == 2 * 2 * 2 * 2
    for sel in res.selected:
        calib_rows = [r for r in res.grid if r["split"] == "calibration" and r["budget"] == sel["budget"]]
        # the chosen setting is one of the grid's and its calibration numbers are the grid's
        match = [r for r in calib_rows if r["s_min"] == sel["s_min"] and r["alpha"] == sel["alpha"]]
        assert match and match[0]["accuracy"] == sel["calibration"].accuracy
        assert sel["held_out"].problems == res.test_problems


def test_reports_write_every_artifact(tmp_path):
    problems = toy_pool(problems=30, samples=16)
    batch = build_batch(problems, orders=2)
    res = replay_policies(batch, [make_policy(n, 8) for n in ("bon", "optscale0", "sc")], dataset="toy")
    files = write_replay_report(tmp_path / "r", [res])
    names = {f.name for f in files}
    assert {"results.csv", "results.parquet", "bon_curve.csv", "table.md", "table.tex", "nstar.png",
            "pareto_toy_N8.png", "summary.json"} <= names
    md = (tmp_path / "r" / "table.md").read_text()
    assert "OptScale$^0$ (MLE)" in md and "BoN curve at same tokens" in md
    assert json.loads((tmp_path / "r" / "summary.json").read_text())[0]["dataset"] == "toy"
    import pyarrow.parquet as pq

    assert pq.read_table(tmp_path / "r" / "results.parquet").num_rows == 3
    sw = sweep(batch, "optscale0", [8], [0.8, 0.9], [0.5])
    files = write_sweep_report(tmp_path / "s", sw, "toy")
    assert (tmp_path / "s" / "grid.csv").exists() and (tmp_path / "s" / "pareto_held_out.png").stat().st_size > 0


def test_paper_table_shapes():
    rows = [{"dataset": d, "policy": p, "n_max": n, "accuracy": 0.9, "ci_low": 0.88, "ci_high": 0.92,
             "mean_tokens": 1234.0} for d in ("A", "B") for p in ("bon", "optscale0") for n in (8, 16)]
    md = paper_table(rows)
    assert md.count("\n") == 2 + 4 and "A acc. | A tokens | B acc. | B tokens" in md
    tex = paper_table(rows, "latex")
    assert r"\multicolumn{2}{c}{A}" in tex and "Best-of-N (BoN) ($N=8$)" in tex
    assert baseline_table([]).count("\n") == 2


def test_run_report_from_a_run_folder(tmp_path):
    from optscale.errors import InputError
    from optscale.report import write_run_report

    (tmp_path / "config.json").write_text(json.dumps({"policy": {"name": "optscale", "n_max": 8}}))
    rows = [{"id": f"p{i}", "answer": "1", "correct": i % 2 == 0, "n_samples": 2 + i % 3, "tokens": 100 * (i + 1),
             "stop_reason": "n_star" if i % 3 else "n_max"} for i in range(6)]
    (tmp_path / "problems.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    files = write_run_report(tmp_path)
    summary = json.loads(files[0].read_text())
    assert summary["problems"] == 6 and summary["accuracy"] == 0.5 and summary["n_max"] == 8
    assert summary["samples_saved_vs_budget"] == pytest.approx(1 - 3.0 / 8)
    assert summary["stop_reasons"] == {"n_max": 2, "n_star": 4}
    with pytest.raises(InputError, match="problems.jsonl"):
        write_run_report(tmp_path / "missing")
