"""Replay engine, metrics, sweeps and reports."""

import dataclasses
import json

import numpy as np
import pytest

from conftest import toy_pool
from optscale.errors import InputError
from optscale.policies import make_policy
from optscale.replay import (bon_curve, build_batch, evaluate, pareto_mask, policy_stats, replay_policies, split_problems,
                             sweep)
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


@pytest.mark.parametrize("objective", ["match", "match-bon", "budget", "gain"])
def test_held_out_labels_never_change_the_sweeps_selection(objective):
    problems = toy_pool(problems=60, samples=16, seed=4)
    batch = build_batch(problems, orders=2)
    calib_idx, test_idx = split_problems(60, 0.5, seed=0)
    grid = dict(budgets=[8, 16], s_mins=[0.8, 0.9, 0.95], alphas=[0.5, 0.9], seed=0, objective=objective,
                token_share=0.9, splits=2)
    base = sweep(batch, "optscale0", **grid)

    def chosen(res):
        return [(s["budget"], s["met"], s["reason"], s["s_min"], s["alpha"],
                 s["calibration"].accuracy if s["met"] else None) for s in res.selected]

    for seed in range(3):
        correct = batch.correct.copy()
        correct[test_idx] = np.random.default_rng(seed).random(correct[test_idx].shape) < 0.5
        res = sweep(dataclasses.replace(batch, correct=correct, cache={}), "optscale0", **grid)
        assert chosen(res) == chosen(base)
        # the relabelling did reach the held-out numbers, so the equality above is not vacuous
        held = lambda r: [s["held_out"].accuracy for s in r.selected if s["met"]]  # noqa: E731
        if objective != "gain":
            assert held(base) and held(res) != held(base)


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
                        (lambda: sweep(batch, "optscale0", [4], [0.9], [0.5], seed=-1), "seed"),
                        (lambda: sweep(batch, "optscale0", [4], [0.9], [0.5], splits=0), "splits"),
                        (lambda: sweep(batch, "optscale0", [4], [0.9], [0.5], target=2.0), "target"),
                        (lambda: sweep(batch, "optscale0", [4], [0.9], [0.5], token_share=0), "token_share"),
                        (lambda: sweep(batch, "optscale0", [4], [0.9], None, grid={"alpha": []}), "grid.alpha"),
                        (lambda: sweep(batch, "optscale0", [4], [0.9], None, grid={"peek": [0]}), "grid.peek")]:
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
    from optscale.io import MANIFEST

    assert sorted(files) == sorted(p for p in (tmp_path / "s").iterdir() if p.name != MANIFEST)
    assert (tmp_path / "s" / MANIFEST).exists()  # the record that optscale wrote them, for the next run


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


# -- the envelope of every fixed-N method --------------------------------------------------------


def _brute_envelope(points, t):
    """max over single fixed methods costing <= t and over mixtures of two spanning t (the definition)."""
    best = -np.inf
    for ti, ai in points:
        if ti <= t * (1 + 1e-12):
            best = max(best, ai)
        for tj, aj in points:
            if ti <= t <= tj and tj > ti:
                best = max(best, ai + (aj - ai) * (t - ti) / (tj - ti))
    return best if best > -np.inf else float("nan")


def test_fixed_curves_and_envelope_match_brute_force():
    from optscale.policies.selection import select
    from optscale.replay import Baseline, fixed_curves

    problems = toy_pool(problems=25, samples=10, ragged=True, seed=3)
    batch = build_batch(problems, orders=3, seed=5)
    curves = fixed_curves(batch)
    assert curves.rules == ("best", "majority", "weighted")
    points = {}
    for k, rule in enumerate(curves.rules):
        for n in range(1, 11):
            chosen = select(rule, batch.flat("score"), batch.flat("answer"), np.minimum(n, batch.flat_available()))
            chosen = chosen.reshape(batch.shape[:2])
            hit = np.take_along_axis(batch.correct, np.maximum(chosen, 0)[..., None], axis=2)[..., 0] & (chosen >= 0)
            np.testing.assert_allclose(curves.accuracy[k, n - 1], hit.mean(axis=1))
            tokens = np.where(np.arange(10) < n, batch.tokens, 0).sum(axis=2).mean()
            points[(rule, n)] = (tokens, hit.mean())
    baseline = Baseline(curves, resamples=50)
    for n_max in (3, 10):
        pts = [v for (rule, n), v in points.items() if n <= n_max]
        lo, hi = min(t for t, _ in pts), max(t for t, _ in pts)
        for t in np.linspace(lo * 0.9, hi * 1.1, 23):
            got = baseline.at(n_max, t)
            want = _brute_envelope(pts, t)
            assert got["envelope_accuracy_same_tokens"] == pytest.approx(want, nan_ok=True), (n_max, t)
            single = [(a, -tk) for tk, a in pts if tk <= t * (1 + 1e-12)]
            if single:
                assert got["best_fixed_method_accuracy"] == pytest.approx(max(single)[0])
    # a policy that is one of the fixed methods sits on or under the envelope, never above it
    pol = make_policy("bon", 6, select="majority")
    st = evaluate(batch, pol.replay(batch), pol)
    assert st.accuracy == pytest.approx(points[("majority", 6)][1])
    assert st.gain_vs_envelope <= 1e-12 and st.gain_vs_envelope_ci_low <= st.gain_vs_envelope and not st.beats_envelope
    best_single = max((a for (r, n), (tk, a) in points.items() if n <= 6 and tk <= st.mean_tokens * (1 + 1e-12)))
    assert st.best_fixed_method_accuracy == pytest.approx(best_single)


def test_answer_only_batches_use_majority_vote_only():
    from optscale.replay import fixed_curves

    batch = build_batch(toy_pool(problems=10, samples=8), orders=2)
    no_scores = dataclasses.replace(batch, score=np.full_like(batch.score, np.nan), has_scores=False, cache={})
    curves = fixed_curves(no_scores)
    assert curves.rules == ("majority",)
    np.testing.assert_allclose(curves.accuracy[0], fixed_curves(batch).accuracy[1])


def _first_success_world(rng, problems=200, n_max=8, qs=(0.1, 0.4, 0.7)):
    """Perfect verifier, one token per sample, q_p from qs: BoN@n and 'stop at the first correct sample'
    have closed-form population accuracy and cost, so the true gain over the envelope is known."""
    from optscale.replay import FixedCurves, ReplayOutcome

    q = rng.choice(qs, problems)
    hits = rng.random((problems, n_max)) < q[:, None]
    any_by = np.logical_or.accumulate(hits, axis=1)
    curves = FixedCurves(("best",), any_by.T[None].astype(float), np.tile(np.arange(1.0, n_max + 1)[:, None], problems),
                         np.tile(np.arange(1.0, n_max + 1)[:, None], problems))
    first = np.where(hits.any(axis=1), hits.argmax(axis=1) + 1, n_max).astype(float)
    outcome = ReplayOutcome(any_by[:, -1].astype(float), first, first.astype(np.float32), 1)
    qa = np.array(qs)
    acc_n = [np.mean(1 - (1 - qa) ** n) for n in range(1, n_max + 1)]
    tokens = np.mean([sum((1 - q_) ** k for k in range(n_max)) for q_ in qa])
    true_gain = acc_n[-1] - np.interp(tokens, np.arange(1, n_max + 1), acc_n)  # acc_n is concave: the envelope
    return curves, outcome, true_gain


def test_paired_bootstrap_covers_the_true_gain_and_beats_an_unpaired_interval():
    from optscale.replay import Baseline
    from optscale.replay.metrics import envelope_value

    rng = np.random.default_rng(0)
    pol = make_policy("bon", 8)
    covered, paired_w, unpaired_w = 0, [], []
    runs = 120
    for i in range(runs):
        curves, outcome, true_gain = _first_success_world(rng)
        baseline = Baseline(curves, resamples=400, seed=i)
        st = policy_stats([pol], [outcome], baseline)[0]
        covered += st.gain_vs_envelope_ci_low <= true_gain <= st.gain_vs_envelope_ci_high
        paired_w.append(st.gain_vs_envelope_ci_high - st.gain_vs_envelope_ci_low)
        # unpaired: the policy and the fixed methods resampled independently
        other = Baseline(curves, resamples=400, seed=10_000 + i).envelope(8)
        boot = baseline.bootstrap
        gain = boot.means(outcome.correct) - envelope_value(other.vx, other.vy, other.count,
                                                             boot.means(outcome.tokens)[:, None])[:, 0]
        lo, hi = np.quantile(gain, [0.025, 0.975])
        unpaired_w.append(hi - lo)
    assert true_gain > 0.05  # the rule really beats the envelope here
    assert covered / runs >= 0.88
    assert np.mean(paired_w) < 0.6 * np.mean(unpaired_w)


# -- sweep objectives, splits and the streaming reader ---------------------------------------------


def _rows(*triples):
    from types import SimpleNamespace

    return [SimpleNamespace(accuracy=a, mean_tokens=t, gain_vs_envelope=g) for a, t, g in triples]


def test_sweep_objectives_choose_what_they_say():
    from optscale.replay.sweep import choose

    rows = _rows((0.80, 100, 0.01), (0.90, 300, -0.01), (0.92, 500, 0.00), (0.90, 250, 0.02), (0.95, 900, 0.005))
    assert choose(rows, "match", 0.90, 1000, 0.5)[0] == 3  # cheapest reaching 90%
    assert choose(rows, "match-bon", 0.90, 1000, 0.5)[0] == 3
    assert choose(rows, "budget", 0.90, 1000, 0.5)[0] == 2  # most accurate within 500 tokens
    assert choose(rows, "budget", 0.90, 1000, 0.3)[0] == 3  # 90% twice within 300: the cheaper
    assert choose(rows, "budget", 0.90, 1000, 0.25)[0] == 3
    assert choose(rows, "budget", 0.90, 1000, 0.2)[0] == 0
    assert choose(rows, "gain", 0.90, 1000, 0.5)[0] == 3
    for objective, target, share in (("match", 0.96, 0.5), ("budget", 0.9, 0.05)):
        i, why = choose(rows, objective, target, 1000, share)
        assert i is None and why.startswith("no setting")
    i, why = choose(_rows((0.8, 100, -0.01), (0.9, 200, 0.0)), "gain", 0.9, 1000, 0.5)
    assert i is None and "no setting had a positive gain" in why


def test_sweep_says_when_nothing_meets_the_objective_and_counts_splits():
    batch = build_batch(toy_pool(problems=40, samples=16, seed=2), orders=2)
    res = sweep(batch, "bon", [8], grid={"select": ["best", "majority"]}, objective="budget", token_share=0.1, splits=3)
    assert [s["met"] for s in res.selected] == [False] and res.selected[0]["held_out"] is None
    assert "nothing met the objective" in res.selected[0]["reason"]
    assert res.summary[0]["met"] == 0 and res.summary[0]["splits"] == 3
    res = sweep(batch, "bon", [8], grid={"select": ["best", "majority", "weighted"]}, objective="match", target=0.0,
                splits=4)
    assert len(res.splits) == 4 and [s["seed"] for s in res.splits] == [0, 1, 2, 3]
    assert len(res.grid) == 4 * 2 * 3
    wins = sum(s["selected"][0]["held_out"].gain_vs_envelope > 0 for s in res.splits)
    assert res.summary[0]["met"] == 4 and res.summary[0]["beats_envelope"] == wins
    gains = [s["selected"][0]["held_out"].gain_vs_envelope for s in res.splits]
    assert res.summary[0]["gain_vs_envelope_min"] == pytest.approx(min(gains))
    # the held-out halves are also measured against the calibrated envelope of their calibration half
    tuned = [s["selected"][0]["held_out"].gain_vs_calibrated_envelope for s in res.splits]
    assert all(np.isfinite(tuned)) and all(t >= g - 1e-12 for t, g in zip(tuned, gains))
    assert res.summary[0]["gain_vs_calibrated_envelope_mean"] == pytest.approx(np.mean(tuned))
    assert res.summary[0]["beats_calibrated_envelope"] == sum(t > 0 for t in tuned)
    assert all(np.isnan(s["selected"][0]["calibration"].gain_vs_calibrated_envelope) for s in res.splits)
    # match with target 0: the cheapest setting; all three cost the same, so the most accurate of them
    for s in res.splits:
        rows = [r for r in res.grid if r["split_seed"] == s["seed"] and r["split"] == "calibration"]
        assert s["selected"][0]["calibration"].accuracy == max(r["accuracy"] for r in rows)


def test_streaming_arrays_replay_chunk_by_chunk_exactly_like_one_batch(tmp_path):
    from optscale.pools import PoolProblem, write_pool
    from optscale.replay import read_pool_arrays

    problems = toy_pool(problems=23, samples=12, ragged=True, seed=6)
    path = tmp_path / "p.jsonl"
    write_pool(path, [PoolProblem.model_validate({
        "id": p.id, "question": p.question, "answer": p.answer,
        "samples": [{"answer": s.answer, "score": s.score, "tokens": s.tokens, "correct": s.correct} for s in p.samples],
    }) for p in problems])
    arrays = read_pool_arrays(path)
    batch = build_batch(problems, orders=4, seed=9)
    source = arrays.ordered(4, 9, chunk_cells=4 * 12 * 5)
    assert source.n_chunks == 5
    rows = []
    for part, chunk in source.chunks():
        for name in ("score", "answer", "tokens", "correct"):
            np.testing.assert_array_equal(getattr(chunk, name), getattr(batch, name)[part])
        rows.append(part)
    pols = [make_policy("optscale0", 8), make_policy("esc", 12), make_policy("bon", 4, select="weighted")]
    one, chunked = replay_policies(batch, pols, seed=1), replay_policies(source, pols, seed=1)
    assert [s.as_dict() for s in one.stats] == [s.as_dict() for s in chunked.stats]
    assert one.to_json()["envelope"] == chunked.to_json()["envelope"]


# ----------------------------------------------------------------------------- review 9 regressions


def test_staged_dir_removes_staging_left_by_a_killed_run_and_keeps_live_ones(tmp_path):
    import os
    import subprocess
    import sys

    from optscale.io import staged_dir

    out = tmp_path / "r"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    killed = out / f".staging-{dead.pid}-abc"  # a report writer killed halfway
    (killed / "sub").mkdir(parents=True)
    (killed / "sub" / "table.md").write_text("half")
    live = out / f".staging-{os.getppid()}-def"  # another writer still running
    live.mkdir()
    with staged_dir(out, "out") as stage:
        (stage / "a.txt").write_text("new")
    assert (out / "a.txt").read_text() == "new"
    assert not killed.exists() and live.is_dir()
    assert [p.name for p in out.glob(".staging-*")] == [live.name]


def test_staged_dir_doc_says_where_it_stages_and_what_a_crash_leaves():
    from optscale.io import staged_dir

    doc = " ".join(staged_dir.__doc__.split())
    assert "inside ``out``" in doc and "beside" not in doc and "crash" in doc


def test_check_sweep_refuses_a_setting_both_swept_and_fixed():
    from optscale.replay import check_sweep

    for kwargs, place in [(dict(s_mins=[0.8, 0.9], settings={"s_min": "0.9"}), "s_mins"),
                          (dict(grid={"peek": ["3", "4"]}, settings={"peek": "5"}), "grid.peek")]:
        with pytest.raises(InputError, match="both swept and fixed") as info:
            check_sweep("optscale0", [8], **kwargs)
        assert info.value.where == place


def test_table_labels_come_from_the_policy_classes():
    from optscale.policies import POLICIES
    from optscale.report import METHOD_NAMES

    assert set(METHOD_NAMES) == set(POLICIES.names())
    for name, cls in POLICIES.items():
        assert cls.label and METHOD_NAMES[name] == cls.label
    assert list(METHOD_NAMES)[:7] == ["bon", "sc", "esc", "asc", "optscale0", "optscale-t", "optscale"]
    rows = [{"dataset": "d", "policy": "pandora", "n_max": 8, "accuracy": 0.5, "ci_low": 0.4, "ci_high": 0.6,
             "mean_tokens": 10.0}]
    assert "| Pandora's box | 8 |" in paper_table(rows)


def test_nstar_map_defaults_come_from_the_optscale_model(tmp_path, monkeypatch):
    import optscale.policies.optscale as optscale_policies
    import optscale.stats
    from optscale.policies import OptScale0
    from optscale.report.plots import nstar_plot

    fields = OptScale0.model_fields
    assert optscale_policies.DEFAULT_TARGET == (fields["s_min"].default, fields["alpha"].default)
    seen = {}

    def capture(mu, sigma, s_min, alpha, n_max):
        seen.update(s_min=s_min, alpha=alpha)
        raise RuntimeError("captured")

    monkeypatch.setattr(optscale_policies, "DEFAULT_TARGET", (0.5, 0.6))  # the one place
    monkeypatch.setattr(optscale.stats, "min_samples", capture)
    with pytest.raises(RuntimeError, match="captured"):
        nstar_plot(tmp_path / "n.png")
    assert seen == {"s_min": 0.5, "alpha": 0.6}
