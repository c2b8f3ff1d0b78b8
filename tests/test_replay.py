"""Replay engine, metrics, sweeps and reports."""

import dataclasses
import json

import numpy as np
import pytest

from conftest import toy_pool
from optscale.errors import InputError
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
    # the best fixed N within its tokens, found directly: the most accurate N costing no more (first on ties)
    direct = [(np.take_along_axis(batch.correct, np.argmax(batch.score[:, :, :n], axis=2)[..., None], axis=2).mean(), -n)
              for n in range(1, 13) if batch.tokens[:, :, :n].sum(axis=2).mean() <= st.mean_tokens * (1 + 1e-12)]
    accuracy, minus_n = max(direct)
    assert (st.best_fixed_n, st.best_fixed_accuracy) == (-minus_n, pytest.approx(accuracy))
    assert st.best_fixed_n <= 5 and st.best_fixed_accuracy >= st.accuracy - 1e-12


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


@pytest.mark.parametrize("objective", ["match-bon", "gain"])
def test_held_out_labels_never_change_the_sweeps_selection(objective):
    problems = toy_pool(problems=60, samples=16, seed=4)
    batch = build_batch(problems, orders=2)
    calib_idx, test_idx = split_problems(60, 0.5, seed=0)
    grid = dict(budgets=[8, 16], s_mins=[0.8, 0.9, 0.95], alphas=[0.5, 0.9], seed=0, objective=objective)
    base = sweep(batch, "optscale0", **grid)
    chosen = lambda res: [(s["budget"], s["s_min"], s["alpha"], s["calibration"].accuracy) for s in res.selected]
    for seed in range(3):
        correct = batch.correct.copy()
        correct[test_idx] = np.random.default_rng(seed).random(correct[test_idx].shape) < 0.5
        res = sweep(dataclasses.replace(batch, correct=correct, cache={}), "optscale0", **grid)
        assert chosen(res) == chosen(base)
        # the relabelling did reach the held-out numbers, so the equality above is not vacuous
        assert [s["held_out"].accuracy for s in res.selected] != [s["held_out"].accuracy for s in base.selected]


def test_library_errors_name_the_arguments():
    batch = build_batch(toy_pool(problems=6, samples=4), orders=1)
    for call, where in [(lambda: build_batch(toy_pool(problems=2), orders=0), "orders"),
                        (lambda: build_batch(toy_pool(problems=2), orders=10**20), "orders"),
                        (lambda: build_batch(toy_pool(problems=2), seed=-1), "seed"),
                        (lambda: replay_policies(batch, [make_policy("bon", 4)], seed=-1), "seed"),
                        (lambda: split_problems(10, 1.0, 0), "calib_fraction"),
                        (lambda: sweep(batch, "optscale0", [4], [0.9], [0.5], objective="best"), "objective"),
                        (lambda: sweep(batch, "optscale0", [4], [0.9], [1.5]), "alphas"),
                        (lambda: sweep(batch, "optscale0", [4], [2.0], [0.5]), "s_mins"),
                        (lambda: sweep(batch, "optscale0", [0], [0.9], [0.5]), "budgets"),
                        (lambda: sweep(batch, "optscale0", [4], [0.9], [0.5], seed=-1), "seed")]:
        with pytest.raises(InputError) as info:
            call()
        assert info.value.where == where


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
    assert sorted(files) == sorted((tmp_path / "s").iterdir())


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_report_sets_are_published_whole_or_not_at_all(tmp_path, monkeypatch):
    import optscale.report as report

    batch = build_batch(toy_pool(problems=30, samples=16), orders=2)
    out = tmp_path / "r"
    write_replay_report(out, [replay_policies(batch, [make_policy("bon", 8)], dataset="toy")])
    write_sweep_report(out, sweep(batch, "optscale0", [8], [0.9], [0.5]), "toy")
    before = _snapshot(out)

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    newer = replay_policies(batch, [make_policy(n, 8) for n in ("sc", "esc")], dataset="toy")
    monkeypatch.setattr(report, "nstar_plot", boom)  # the last file: tables and Pareto plots are already written
    with pytest.raises(RuntimeError, match="disk full"):
        write_replay_report(out, [newer])
    assert _snapshot(out) == before
    monkeypatch.setattr(report, "pareto_plot", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        write_sweep_report(out, sweep(batch, "optscale0", [8], [0.8], [0.9]), "toy")
    assert _snapshot(out) == before


def test_reports_name_an_unwritable_out(tmp_path):
    res = replay_policies(build_batch(toy_pool(problems=10, samples=8)), [make_policy("bon", 4)], dataset="toy")
    (tmp_path / "file").write_text("keep")
    for out in ("/proc/optscale-test", tmp_path / "file"):
        with pytest.raises(InputError) as info:
            write_replay_report(out, [res])
        assert info.value.where == "out"
    assert (tmp_path / "file").read_text() == "keep"


def test_paper_table_shapes():
    rows = [{"dataset": d, "policy": p, "n_max": n, "accuracy": 0.9, "ci_low": 0.88, "ci_high": 0.92,
             "mean_tokens": 1234.0} for d in ("A", "B") for p in ("bon", "optscale0") for n in (8, 16)]
    md = paper_table(rows)
    assert md.count("\n") == 2 + 4 and "A acc. | A tokens | B acc. | B tokens" in md
    tex = paper_table(rows, "latex")
    assert r"\multicolumn{2}{c}{A}" in tex and "Best-of-N (BoN) ($N=8$)" in tex
    assert baseline_table([]).count("\n") == 2
