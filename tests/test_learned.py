"""The learned stopping table: fit, backward induction, budget, file format, refusals, live = replay, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import check_live_equals_replay, run_cli, toy_pool
from optscale.errors import InputError
from optscale.policies import make_policy, select
from optscale.policies.common import score_or_zero
from optscale.policies.learned import (FORMAT, _induction, _prepare, _q_values, file_sha256, fit_table,
                                       load_table, table_states)
from optscale.replay import build_batch


@pytest.fixture(scope="module")
def calib():
    return build_batch(toy_pool(problems=80, samples=16, seed=5), orders=3, seed=1)


def relabel(problems, tag):
    """Toy pools of every seed share ids and questions; give these problems their own."""
    for i, p in enumerate(problems):
        p.id, p.question = f"{tag}/{i}", f"{tag} question {i}"
    return problems


@pytest.fixture(scope="module")
def held():
    return build_batch(relabel(toy_pool(problems=40, samples=16, seed=6), "held"), orders=3, seed=2)


@pytest.mark.parametrize("n_max", [4, 8, 16])
@pytest.mark.parametrize("settings", [
    {"select": "best", "budget": 0.5}, {"select": "majority", "lam": 1e-4, "consensus": False},
    {"select": "weighted", "budget": 0.4, "length_bins": 1}, {"select": "best", "lam": 0.0, "agree_cap": 2, "bins": 3},
])
def test_live_episodes_equal_vectorised_replay(calib, n_max, settings):
    table = fit_table(calib, n_max, **settings)
    assert 0 < table.stop[:-1].mean() < 1 or n_max == 4  # a table that always or never stops would test little
    problems = relabel(toy_pool(problems=25, samples=16, seed=n_max, ragged=True), f"held{n_max}")
    check_live_equals_replay(make_policy("learned", n_max, table=table), problems)


def test_state_positions_are_what_select_returns(calib):
    score, code, tokens = calib.flat("score"), calib.flat("answer"), calib.flat("tokens")
    for rule in ("best", "majority", "weighted"):
        _, chosen = table_states(score, code, tokens, 16, np.array([0.5, 0.9]), 3, True, np.array([200.0]), rule)
        for n in range(1, 17):
            want = select(rule, score_or_zero(score), code, np.full(score.shape[0], n))
            np.testing.assert_array_equal(chosen[:, n - 1], want)


def _brute_force(cal, q_shrink, lam):
    """The recursion of the module doc written out with loops and dicts (no shrinkage)."""
    rows, width = cal.states.shape
    q = {}
    for j in range(width):
        for s in set(cal.states[:, j].tolist()):
            members = [r for r in range(rows) if cal.states[r, j] == s and cal.available[r] > j]
            q[j, s] = np.mean([cal.correct[r, j] for r in members])
    value = {s: q[width - 1, s] for (j, s) in q if j == width - 1}
    stop = {}
    for j in range(width - 2, -1, -1):
        new = {}
        for (jj, s), qs in q.items():
            if jj != j:
                continue
            go = [r for r in range(rows) if cal.states[r, j] == s and cal.available[r] > j + 1]
            cont = np.mean([value[cal.states[r, j + 1]] - lam * cal.cost[r, j + 1] for r in go]) if go else -np.inf
            stop[j, s] = qs >= cont
            new[s] = max(qs, cont)
        value = new
    return stop


@pytest.mark.parametrize("lam", [0.0, 2e-4, 1e-3])
def test_backward_induction_equals_brute_force(lam):
    batch = build_batch(toy_pool(problems=30, samples=4, seed=3), orders=2, seed=0)
    cal, *_ = _prepare(batch, 4, __import__("optscale.policies", fromlist=["Selection"]).Selection.BEST, 3, 2, True, 2)
    q = _q_values(cal, 0.0)
    stop = _induction(cal, q, lam, 0.0)
    want = _brute_force(cal, 0.0, lam)
    assert want and any(want.values()) and not all(want.values()) or lam == 0.0
    for (j, s), decision in want.items():
        assert stop[j, s] == decision, (j, s)


def test_shrinkage_pulls_thin_states_toward_coarser_ones(calib):
    cal, *_ = _prepare(calib, 8, __import__("optscale.policies", fromlist=["Selection"]).Selection.BEST, 4, 3, True, 1)
    raw, pooled = _q_values(cal, 0.0), _q_values(cal, 1e9)
    # With endless shrinkage every state of an n has the estimate of n alone; without, they differ.
    for j in range(8):
        seen = np.unique(cal.states[:, j])
        assert np.allclose(pooled[j], cal.correct[:, j].mean())
        assert np.ptp(raw[j][seen]) > 0


@pytest.mark.parametrize("select_rule", ["best", "weighted"])
@pytest.mark.parametrize("budget", [0.3, 0.6])
def test_budget_bisection_meets_its_constraint_on_calibration(calib, select_rule, budget):
    table = fit_table(calib, 16, select_rule, budget=budget, strict=False)  # scored in-sample on purpose
    d = make_policy("learned", 16, table=table).replay(calib)
    used = np.arange(16)[None, None, :] < d.n_used[..., None]
    spent = np.where(used, calib.tokens, 0).sum(axis=2).mean()
    bon = calib.tokens[:, :, :16].sum(axis=2).mean()
    assert spent <= budget * bon * (1 + 1e-9)
    assert table.fitted["share_of_bon"] == pytest.approx(spent / bon)
    if table.lam > 0:  # the least such cost: a little less spends more than allowed
        cheaper = fit_table(calib, 16, select_rule, lam=table.lam / 1.05)
        assert cheaper.fitted["share_of_bon"] > budget


def test_budget_below_one_sample_and_bad_arguments_are_refused(calib):
    with pytest.raises(InputError) as info:
        fit_table(calib, 16, budget=0.01)
    assert info.value.where == "budget" and "one sample" in info.value.detail
    for kwargs, where in [({"lam": 1.0, "budget": 0.5}, "budget"), ({}, "budget"), ({"lam": -1.0}, "lam"),
                          ({"lam": 0.0, "select": "vote"}, "select"), ({"lam": 0.0, "bins": 0}, "bins"),
                          ({"lam": 0.0, "shrink": -1.0}, "shrink"), ({"lam": 0.0, "n_max": 17}, "n_max")]:
        with pytest.raises(InputError) as info:
            fit_table(calib, **{"n_max": 8, **kwargs})
        assert info.value.where == where, kwargs


def test_table_file_round_trips_and_is_small(calib, held, tmp_path):
    table = fit_table(calib, 16, "weighted", budget=0.5, source={"pool": "toy.jsonl", "sha256": "ab" * 32})
    path = table.save(tmp_path / "t.json")
    text = path.read_text()
    assert len(text) < 200_000 and text.count("\n") > 100  # readable: indented, one state per few lines
    data = json.loads(text)
    assert data["format"] == FORMAT and data["settings"]["select"] == "weighted"
    assert data["calibration"]["sha256"] == "ab" * 32 and data["calibration"]["problems"] == 80
    assert {"mean_accuracy", "mean_tokens", "orders", "samples"} <= data["calibration"].keys()
    back = load_table(path)
    np.testing.assert_array_equal(back.stop, table.stop)
    np.testing.assert_array_equal(back.edges, table.edges)
    assert back.fitted_on == table.fitted_on and len(back.fitted_on) == 80
    assert data["calibration"]["problem_keys"] == sorted(data["calibration"]["problem_keys"])
    a = make_policy("learned", 16, table=str(path)).replay(held)
    b = make_policy("learned", 16, table=table).replay(held)
    np.testing.assert_array_equal(a.n_used, b.n_used)
    assert make_policy("learned", 16, table=str(path)).select.value == "weighted"  # select follows the table


def _broken(data, edit):
    data = json.loads(json.dumps(data))
    edit(data)
    return data


@pytest.mark.parametrize("edit, located", [
    (lambda d: d.update(format="optscale-stopping-table/0"), "field format"),
    (lambda d: d["settings"].update(n_max="16"), "field settings.n_max"),
    (lambda d: d["settings"].update(edges=[0.9, 0.5]), "field settings.edges"),
    (lambda d: d["settings"].update(bins=2), "field settings.bins"),
    (lambda d: d["decisions"].pop(), "field decisions"),
    (lambda d: d["decisions"][3].update(other="SC"), "field decisions[3]"),
    (lambda d: d["decisions"][4].update(consensus="SSSSSSX"), "field decisions[4]"),
    (lambda d: d["decisions"][5].update(n=99), "field decisions[5]"),
    (lambda d: d["decisions"][7].update(d["decisions"][6]), "field decisions[7]"),  # listed twice
])
def test_malformed_or_wrong_version_tables_are_refused_with_their_place(calib, tmp_path, edit, located):
    data = fit_table(calib, 16, budget=0.5).to_json()
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(_broken(data, edit)))
    with pytest.raises(InputError) as info:
        make_policy("learned", 16, table=str(path))
    assert info.value.where == "settings.table" and f"{path} {located}" in info.value.detail


def test_mismatched_missing_or_absent_tables_are_refused(calib, tmp_path):
    path = fit_table(calib, 8, "best", budget=0.5).save(tmp_path / "t8.json")
    for kwargs, words in [({"n_max": 16}, "fitted for n_max 8, not 16"),
                          ({"n_max": 8, "select": "majority"}, "fitted for select=best, not majority")]:
        with pytest.raises(InputError) as info:
            make_policy("learned", kwargs.pop("n_max"), table=str(path), **kwargs)
        assert info.value.where == "settings.table" and words in info.value.detail
        # one line: not the checked table's repr (kilobytes, with every calibration problem key)
        assert "\n" not in str(info.value) and len(str(info.value)) < 400, len(str(info.value))
    for kwargs, words in [({}, "needs a stopping table"), ({"table": str(tmp_path / "none.json")}, "not found")]:
        with pytest.raises(InputError) as info:
            make_policy("learned", 8, **kwargs)
        assert info.value.where == "settings.table" and words in info.value.detail


def test_answer_only_calibration_fits_a_majority_table(calib):
    from dataclasses import replace

    blind = replace(calib, score=np.full(calib.score.shape, np.nan), has_scores=False, cache={})
    table = fit_table(blind, 8, "majority", budget=0.5, strict=False)
    assert table.bins == 1 and not table.consensus and not table.uses_scores
    policy = make_policy("learned", 8, table=table)
    assert not policy.requires_scores() and policy.replay(blind).n_used.mean() < 8
    with pytest.raises(InputError) as info:
        fit_table(blind, 8, "best", budget=0.5)
    assert info.value.where == "select"


def test_cli_policy_fit_end_to_end(tmp_path, monkeypatch, capsys):
    from optscale.pools import write_pool
    from optscale.simulate import simulate_pool

    pool = tmp_path / "calib.jsonl"
    write_pool(pool, simulate_pool(120, 16, seed=4))
    out = tmp_path / "table.json"
    code, stdout, err = run_cli(["policy", "fit", pool, "--n-max", 8, "--budget", 0.5, "--select", "weighted",
                                 "--orders", 2, "--out", out], monkeypatch, capsys)
    assert code == 0, err
    assert f"wrote {out}" in " ".join(stdout.split())
    data = json.loads(out.read_text())
    assert data["calibration"]["sha256"] == file_sha256(pool) and data["calibration"]["pool"] == "calib.jsonl"
    assert data["settings"]["n_max"] == 8 and data["settings"]["budget"] == 0.5 and data["fitted"]["share_of_bon"] <= 0.5
    other = tmp_path / "other.jsonl"  # a pool of another seed: other problems
    write_pool(other, simulate_pool(60, 16, seed=5))
    code, stdout, err = run_cli(["replay", other, "--policy", "learned", "-n", 8, "--set", f"table={out}", "--orders", 2,
                                 "--json"], monkeypatch, capsys)
    assert code == 0, err
    assert json.loads(stdout)["mean_samples"] < 8
    code, _, err = run_cli(["replay", other, "--policy", "learned", "-n", 16, "--set", f"table={out}"], monkeypatch,
                           capsys)
    assert code != 0 and "--set table:" in err and "n_max 8, not 16" in err
    # Its own calibration pool is refused, in replay and in sweep.
    for command in (["replay", pool], ["sweep", pool, "--out", tmp_path / "sw"]):
        code, _, err = run_cli([*command, "--policy", "learned", "-n", 8, "--set", f"table={out}"], monkeypatch, capsys)
        assert code != 0 and "--set table:" in err and "120 of 120 problem(s)" in err, err
        assert "separate calibration pool" in err
    for extra, flag in [(["--budget", 0.5, "--lambda", 0.001], "--budget"), ([], "--budget"),
                        (["--budget", 0.01], "--budget"), (["--lambda", 0, "--select", "vote"], "--select"),
                        (["--lambda", 0, "--orders", 0], "--orders")]:
        code, _, err = run_cli(["policy", "fit", pool, "--n-max", 8, "--out", tmp_path / "x.json", *extra],
                               monkeypatch, capsys)
        assert code != 0 and err.startswith("error: ") and f"{flag}:" in err, (extra, err)
    assert not (tmp_path / "x.json").exists()
    # The table never overwrites the calibration pool it is fitted on.
    before = pool.read_bytes()
    code, _, err = run_cli(["policy", "fit", pool, "--n-max", 8, "--lambda", 0, "--out", pool], monkeypatch, capsys)
    assert code == 2 and err.startswith("error: --out: ") and pool.read_bytes() == before, err


# -- no report on calibration problems; the table read once ------------------------------------------
def test_a_table_refuses_the_problems_it_was_fitted_on(calib, held, tmp_path):
    from dataclasses import replace

    from optscale.policies import Problem
    from optscale.replay import subset

    table = fit_table(calib, 8, budget=0.5)
    path = table.save(tmp_path / "t.json")
    for source in (table, str(path)):
        policy = make_policy("learned", 8, table=source)
        with pytest.raises(InputError) as info:
            policy.replay(calib)
        assert info.value.where == "settings.table" and "80 of 80 problem(s)" in info.value.detail
        assert "separate calibration pool" in info.value.detail
        # Three calibration problems among others: still refused, and counted.
        mixed = build_batch([*relabel(toy_pool(problems=5, samples=16, seed=9), "new"),
                             *toy_pool(problems=3, samples=16, seed=5)], orders=2)
        with pytest.raises(InputError, match="3 of 8 problem"):
            policy.replay(mixed)
        with pytest.raises(InputError, match="1 of 1 problem") as info:
            policy.start(Problem(id=calib.ids[4], question=calib.questions[4]))
        assert info.value.where == "settings.table"
        # Other problems run; an id reused with another question is another problem.
        policy.replay(held)
        policy.start(Problem(id=calib.ids[4], question="another question")).result()
    replay_subset = subset(calib, np.arange(10))
    make_policy("learned", 8, table=replace(table, strict=False)).replay(replay_subset)  # in-sample on purpose


def test_a_table_without_its_calibration_problems_is_refused(calib, tmp_path):
    data = fit_table(calib, 8, budget=0.5).to_json()
    for k, (edit, words) in enumerate([(lambda d: d["calibration"].pop("problem_keys"), "written by an older optscale"),
                                       (lambda d: d["calibration"].update(problem_keys=[]), "non-empty list"),
                                       (lambda d: d["calibration"].update(problem_keys=["XYZ"]), "hex strings")]):
        path = tmp_path / f"old{k}.json"
        path.write_text(json.dumps(_broken(data, edit)))
        with pytest.raises(InputError) as info:
            make_policy("learned", 8, table=str(path))
        assert info.value.where == "settings.table" and f"{path} field calibration.problem_keys" in info.value.detail
        assert words in info.value.detail


def test_the_table_file_is_read_once_when_the_policy_is_built(calib, held, tmp_path, monkeypatch):
    import os

    import optscale.policies.learned.table as learned

    path = fit_table(calib, 8, budget=0.3).save(tmp_path / "t.json")
    reads = []
    real = learned.read_json
    monkeypatch.setattr(learned, "read_json", lambda p: reads.append(p) or real(p))
    learned._cached_table.cache_clear()
    policy = make_policy("learned", 8, table=str(path))
    assert len(reads) == 1 and policy.stopping_table().path == str(path)
    before = policy.replay(held).n_used
    # The file changes under the policy (a table that never stops early): the policy keeps what it checked.
    fit_table(calib, 8, lam=0.0, bins=2, agree_cap=1, length_bins=1, consensus=False).save(path)
    os.utime(path, (os.path.getmtime(path) + 10,) * 2)
    np.testing.assert_array_equal(policy.replay(held).n_used, before)
    policy.start().result()
    assert len(reads) == 1
    assert policy.describe() == f"learned@8(table={path})"


# -- refusals of degenerate pools and oversized tables ------------------------------------------------
def write_toy(path, problems):
    rows = [{"id": p.id, "question": p.question, "answer": p.answer,
             "samples": [{"answer": s.answer, "score": s.score, "tokens": s.tokens, "correct": s.correct}
                         for s in p.samples]} for p in problems]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_pool_without_answers_is_refused_clearly(calib, tmp_path, monkeypatch, capsys):
    from dataclasses import replace

    mute = replace(calib, answer=np.full(calib.answer.shape, -1), cache={})
    for rule in ("majority", "weighted"):
        with pytest.raises(InputError) as info:
            fit_table(mute, 1, rule, lam=0.0)
        assert info.value.where.endswith("field samples[].answer") and "no sample" in info.value.detail
    fit_table(mute, 4, "best", lam=0.0)  # the best-scored sample needs no answer
    problems = relabel(toy_pool(problems=12, samples=4, seed=1), "mute")
    for p in problems:
        for smp in p.samples:
            smp.answer, smp.correct = None, False
    pool = write_toy(tmp_path / "noans.jsonl", problems)
    code, _, err = run_cli(["policy", "fit", pool, "--n-max", 1, "--select", "majority", "--lambda", 0,
                            "--out", tmp_path / "t.json"], monkeypatch, capsys)
    assert code != 0 and err.startswith("error: ") and "no sample" in err and "Traceback" not in err, err


@pytest.mark.parametrize("kwargs, where", [
    ({"agree_cap": 10**9}, "agree_cap"), ({"agree_cap": 1025}, "agree_cap"), ({"bins": 257}, "bins"),
    ({"length_bins": 65}, "length_bins"), ({"agree_cap": 1024, "bins": 256, "length_bins": 64}, "agree_cap"),
])
def test_oversized_fits_are_refused_before_any_work(calib, kwargs, where):
    with pytest.raises(InputError) as info:
        fit_table(calib, 16, lam=0.0, **kwargs)
    assert info.value.where == where


@pytest.mark.parametrize("edit, located", [
    (lambda d: d["settings"].update(agree_cap=300_000_000), "field settings.agree_cap"),
    (lambda d: d["settings"].update(n_max=10**9), "field settings.n_max"),
    (lambda d: d["settings"].update(n_max=60_000), "field settings"),  # 60000 x 8 x 7 x 2 x 3 cells > 2**24
    (lambda d: d["settings"].update(edges=list(range(300)), bins=301), "field settings.edges"),
])
def test_oversized_table_files_are_refused_without_allocating(calib, tmp_path, edit, located):
    data = fit_table(calib, 16, budget=0.5).to_json()
    path = tmp_path / "big.json"
    path.write_text(json.dumps(_broken(data, edit)))
    with pytest.raises(InputError) as info:
        make_policy("learned", 16, table=str(path))
    assert info.value.where == "settings.table" and info.value.detail.startswith(f"{path} {located}:")


def test_cli_policy_fit_refuses_an_oversized_agree_cap(tmp_path, monkeypatch, capsys):
    pool = write_toy(tmp_path / "calib.jsonl", relabel(toy_pool(problems=10, samples=4, seed=2), "cap"))
    code, _, err = run_cli(["policy", "fit", pool, "--n-max", 4, "--lambda", 0, "--agree-cap", 1000000000,
                            "--out", tmp_path / "t.json"], monkeypatch, capsys)
    assert code != 0 and "--agree-cap:" in err and "1 to 1,024" in err, err


# -- benchmarks/policy_frontier.py: what its docstring says, and splits where nothing was chosen -------
def _frontier():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "policy_frontier.py"
    spec = importlib.util.spec_from_file_location("policy_frontier", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_frontier_fits_learned_with_the_default_flags_of_policy_fit(calib, monkeypatch):
    mod = _frontier()
    calls = []
    monkeypatch.setattr(mod, "fit_auto", lambda batch, n_max, **kw: calls.append(kw) or fit_table(
        batch, n_max, lam=0.0, strict=False))
    grid, pols = mod.split_policies("learned", 16, calib)
    assert len(pols) == len(grid) >= 2 and [set(kw) for kw in calls] == [{"budget", "strict"}] * len(grid)
    assert "default flags" in " ".join(mod.__doc__.split())


def test_frontier_reports_unmet_splits_as_not_met_and_sorts_them_last(capsys):
    mod = _frontier()

    def split(gain):
        choice = None if gain is None else {"accuracy": 0.8, "mean_tokens": 10.0, "bon_tokens": 20.0, "gain": gain,
                                            "calibrated_gain": gain + 0.01, "beats_ci": False}
        return {"gain_choice": choice, "match_choice": None}

    rows = {"never": [None] * 6, "slightly_worse": [-0.001] * 6, "mixed": [0.002, None, None, None, None, 0.004]}
    res = {"envelope": [{"envelope_best_accuracy": 0.8, "envelope_best_tokens": 10.0, "envelope_best_method": "bon",
                         "fixed_tokens": 20.0}] * 6,
           "rows": {name: mod._summary([split(g) for g in gains]) for name, gains in rows.items()}}
    assert res["rows"]["never"]["gain"] == [None] * 6 and res["rows"]["mixed"]["chosen"] == 2
    mod.print_table("toy", 8, res, 6)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.split()[:1] in (["never"], ["mixed"],
                                                                                          ["slightly_worse"])]
    assert [line.split()[0] for line in lines] == ["mixed", "slightly_worse", "never"]
    assert "not met" in lines[2] and "0/6" in lines[2] and "+0.00" not in lines[2]
    assert "2/6" in lines[0] and "+0.30 (+0.20..+0.40)" in lines[0]  # the mean over the 2 met splits
    assert "6/6" in lines[1] and "-0.10" in lines[1]
    # beside it the gain over the calibrated envelope, and its count of splits above it
    assert "+1.30 (+1.20..+1.40)" in lines[0] and "+0.90 (+0.90..+0.90)" in lines[1]
