"""Consensus labels (``--labels consensus``, issue 16): a sample is correct when it agrees with full sampling."""

import json
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import run_cli
from optscale.errors import InputError
from optscale.pools import PoolProblem
from optscale.replay import (arrays_from_problems, build_batch, consensus_labels, full_answers, relabel,
                             replay_policies)
from optscale.compose import build_policy

RULES = ("best", "majority", "weighted")


def make(samples_per_problem, ids=None, gold=None) -> list[PoolProblem]:
    """Pool records from lists of (answer, score) per problem."""
    return [PoolProblem.model_validate({
        "id": ids[i] if ids else f"p{i}", "answer": gold,
        "samples": [{"answer": a, "score": s, "tokens": 1 + j} for j, (a, s) in enumerate(samples)],
    }) for i, samples in enumerate(samples_per_problem)]


def reference(samples, rule: str, n_max: int) -> list[bool]:
    """Brute force: the rule's answer on the first n_max samples, then each sample compared with it."""
    head = samples[:n_max]
    if rule == "best":
        top = max(s for _, s in head)
        full = next(a for a, s in head if s == top)  # earliest of the best
    else:
        weight = Counter()
        for a, s in head:
            if a is not None:
                weight[a] += 1 if rule == "majority" else s
        if not weight:
            full = None
        else:
            most = max(weight.values())
            full = next(a for a, _ in head if a is not None and weight[a] == most)  # first seen of the tied
    return [full is not None and a == full for a, _ in samples]


ANSWERS = st.sampled_from(["1", "2", "3", None])
SCORES = st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0])  # exact sums: ties in weighted votes happen for real
PROBLEM = st.lists(st.tuples(ANSWERS, SCORES), min_size=3, max_size=9)


@settings(max_examples=150, deadline=None)
@given(pool=st.lists(PROBLEM, min_size=1, max_size=6), rule=st.sampled_from(RULES), n_max=st.integers(1, 3),
       data=st.data())
def test_labels_match_the_brute_force_reference(pool, rule, n_max, data):
    if all(a is None for samples in pool for a, _ in samples):
        pool[0][0] = ("1", pool[0][0][1])
    labels = consensus_labels(arrays_from_problems(make(pool)), rule, n_max)
    for i, samples in enumerate(pool):
        row = labels[i, :len(samples)].tolist()
        assert row == reference(samples, rule, n_max), (samples, rule, n_max)
        assert not labels[i, len(samples):].any()  # padding is never correct


@settings(max_examples=60, deadline=None)
@given(answer=st.sampled_from(["7", "x+1"]), scores=st.lists(SCORES, min_size=2, max_size=8),
       rule=st.sampled_from(RULES))
def test_one_answer_everywhere_makes_every_label_true(answer, scores, rule):
    arrays = arrays_from_problems(make([[(answer, s) for s in scores]]))
    assert consensus_labels(arrays, rule, len(scores)).all()


@settings(max_examples=100, deadline=None)
@given(samples=PROBLEM, rule=st.sampled_from(RULES), n_max=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_labels_do_not_depend_on_the_order_beyond_the_n_max_prefix(samples, rule, n_max, seed):
    if all(a is None for a, _ in samples):
        samples[0] = ("1", samples[0][1])
    tail = np.random.default_rng(seed).permutation(len(samples) - n_max) + n_max
    order = list(range(n_max)) + tail.tolist()
    before = consensus_labels(arrays_from_problems(make([samples])), rule, n_max)[0]
    after = consensus_labels(arrays_from_problems(make([[samples[j] for j in order]])), rule, n_max)[0]
    assert after.tolist() == before[order].tolist()


@settings(max_examples=50, deadline=None)
@given(pool=st.lists(PROBLEM, min_size=1, max_size=4), rule=st.sampled_from(RULES), seed=st.integers(0, 999))
def test_a_batch_in_shuffled_orders_carries_each_sample_its_pool_label(pool, rule, seed):
    pool[0][0] = ("1", pool[0][0][1])
    problems = make(pool)
    arrays = arrays_from_problems(problems)
    batch = build_batch(problems, orders=4, seed=seed)
    ordered = next(relabel(arrays, "consensus", rule, 3).ordered(4, seed).chunks())[1]
    assert np.array_equal(consensus_labels(batch, rule, 3), ordered.correct)
    assert np.array_equal(consensus_labels(batch, rule, 3)[:, 0, :], consensus_labels(arrays, rule, 3))


def test_a_problem_whose_full_answer_is_none_counts_every_sample_wrong():
    arrays = arrays_from_problems(make([[(None, 0.9), ("1", 0.1), ("1", 0.2)], [("2", 0.5)] * 3]))
    assert consensus_labels(arrays, "best", 3).tolist() == [[False] * 3, [True] * 3]
    assert full_answers(arrays.answer, arrays.score, arrays.available, "best", 3).tolist() == [-1, 0]
    assert consensus_labels(arrays, "majority", 3)[0].tolist() == [False, True, True]


def test_answers_are_compared_in_normal_form():
    arrays = arrays_from_problems(make([[("1/2", 0.5), ("\\frac{1}{2}", 0.5), ("0.5", 0.1)]]))
    labels = consensus_labels(arrays, "majority", 3)[0]
    assert labels[0] and labels[1]


def test_too_few_samples_are_refused_naming_the_problems_their_count_and_the_fewest():
    pool = [[("1", 0.5)] * k for k in (2, 5, 3, 1, 4, 2, 2, 2)]
    arrays = arrays_from_problems(make(pool, ids=[f"q{i}" for i in range(8)]), source="t.jsonl")
    with pytest.raises(InputError) as info:
        consensus_labels(arrays, "best", 4)
    assert info.value.where == "n_max"
    msg = info.value.detail
    assert "6 problem(s) of t.jsonl" in msg and "the fewest: 1" in msg and "'q0', 'q2', 'q3', 'q5', 'q6'" in msg
    assert "and 1 more" in msg and "'q1'" not in msg


def test_a_pool_without_any_answer_is_refused_naming_it():
    arrays = arrays_from_problems(make([[(None, 0.5)] * 3] * 2), source="traffic/")
    with pytest.raises(InputError, match="no sample has an answer") as info:
        consensus_labels(arrays, "majority", 3)
    assert info.value.where == "traffic/"


def test_score_rules_on_an_answer_only_pool_are_refused():
    arrays = arrays_from_problems([PoolProblem.model_validate(
        {"id": "a", "samples": [{"answer": "1", "tokens": 1}] * 2})])
    assert consensus_labels(arrays, "majority", 2).all()
    with pytest.raises(InputError, match="select=majority") as info:
        consensus_labels(arrays, "best", 2)
    assert info.value.where == "select"


def test_gold_labels_are_kept_and_unknown_labels_named():
    arrays = arrays_from_problems(make([[("1", 0.5), ("2", 0.4)]]))
    assert relabel(arrays, "gold", "best", 2) is arrays
    with pytest.raises(InputError) as info:
        relabel(arrays, "silver", "best", 2)
    assert info.value.where == "labels"


def test_replay_on_consensus_measures_agreement_with_full_sampling():
    """bon at N_max returns the full answer by definition: 100% on consensus labels, whatever gold says."""
    rng = np.random.default_rng(3)
    pool = [[(str(rng.integers(3)), float(rng.random())) for _ in range(8)] for _ in range(20)]
    arrays = relabel(arrays_from_problems(make(pool, gold="0")), "consensus", "best", 8)
    result = replay_policies(arrays.ordered(3, 0), [build_policy("bon", 8, {})], labels="consensus", bootstrap=50)
    assert result.stats[0].accuracy == 1.0 and result.to_json()["labels"] == "consensus"


# -- the CLI ---------------------------------------------------------------------------------------


@pytest.fixture
def cli(monkeypatch, capsys):
    return lambda *args: run_cli(args, monkeypatch, capsys)


@pytest.fixture
def traffic(tmp_path):
    """A traffic folder: 24 episodes of 8 samples, no gold, answers that agree more often when scored high."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "traffic"
    folder.mkdir()
    for part in range(2):
        rows = []
        for i in range(12):
            truth = str(rng.integers(2))
            samples = []
            for j in range(8):
                s = float(rng.random())
                samples.append({"answer": truth if s > 0.4 else str(rng.integers(5, 7)), "score": s, "tokens": 100 + j})
            rows.append({"id": f"e{part}-{i}", "answer": None, "samples": samples,
                         "optscale": {"policy": "sc", "n_max": 8, "stopped_at": 3, "select": "majority"}})
        (folder / f"traffic-20261208T0{part}0000Z-r0-00000{part}.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_cli_replay_with_consensus_labels_reads_a_traffic_folder(traffic, cli):
    code, out, err = cli("replay", traffic, "--policy", "sc", "--n-max", 8, "--orders", 3, "--labels", "consensus",
                         "--json")
    assert code == 0, err
    res = json.loads(out)
    assert res["labels"] == "consensus" and any("majority answer over the first 8" in n for n in res["notes"])
    full = [r for r in res["fixed_curves"] if r["rule"] == "majority" and r["n"] == 8]
    assert full and full[0]["accuracy"] == 1.0  # majority@8 is the consensus itself
    report = traffic.parent / "report"
    code, out, err = cli("replay", traffic, "--policy", "sc", "--n-max", 8, "--labels", "consensus", "--out", report)
    assert code == 0 and "consensus labels" in out and "CONSENSUS LABELS" in out
    assert json.loads((report / "summary.json").read_text())[0]["labels"] == "consensus"


def test_cli_consensus_with_too_few_samples_names_n_max(traffic, cli):
    code, out, err = cli("replay", traffic, "--policy", "sc", "--n-max", 9, "--labels", "consensus")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: --n-max: ") and "24 problem(s)" in err and "'e0-0'" in err and "fewest: 8" in err


def test_cli_consensus_of_a_pool_without_answers_names_the_folder(traffic, cli, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "traffic-1.jsonl").write_text(json.dumps(
        {"id": "a", "answer": None, "samples": [{"answer": None, "score": 0.5, "tokens": 1}] * 4}) + "\n")
    code, out, err = cli("replay", empty, "--policy", "sc", "--n-max", 4, "--labels", "consensus")
    assert code == 2 and err.startswith(f"error: {empty}: no sample has an answer"), err


def test_cli_unknown_labels_name_the_flag(traffic, cli):
    code, out, err = cli("replay", traffic, "--labels", "silver")
    assert code == 2 and err.startswith("error: --labels: unknown labels 'silver'"), err


def test_cli_sweep_with_consensus_labels(traffic, cli, tmp_path):
    out_dir = tmp_path / "sweep"
    code, out, err = cli("sweep", traffic, "--policy", "esc", "--n-max", "4,8", "--labels", "consensus",
                         "--set", "select=majority", "--grid", "window=2,3", "--objective", "gain", "--out", out_dir)
    assert code == 0, err
    assert "consensus labels" in out
    grid = (out_dir / "grid.csv").read_text().splitlines()
    assert "labels" in grid[0].split(",") and all(line.endswith("consensus") or ",consensus," in line
                                                  for line in grid[1:])
    import csv
    selected = list(csv.DictReader((out_dir / "selected.csv").open()))
    assert selected and {row["labels"] for row in selected} == {"consensus"}
    assert "(consensus labels)" in (out_dir / "table.md").read_text()
    code, out, err = cli("sweep", traffic, "--policy", "bon", "--n-max", "4", "--labels", "consensus",
                         "--grid", "select=best,majority", "--out", tmp_path / "s2")
    assert code == 2 and err.startswith("error: --grid select: "), err
    assert not (tmp_path / "s2").exists()


# -- policy fit ------------------------------------------------------------------------------------


def scored_pool(problems: int = 40, samples: int = 6, seed: int = 0) -> list[PoolProblem]:
    """Problems whose answers agree more often when scored high; gold is '0' but often not the consensus."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(problems):
        truth = str(rng.integers(3))
        rows = [(truth if s > 0.5 else str(rng.integers(3, 5)), float(s)) for s in rng.random(samples)]
        out.append(rows)
    return make(out, gold="0")


@pytest.mark.parametrize("select", ["best", "majority", "weighted", "auto"])
def test_a_table_fitted_on_consensus_agrees_fully_at_n_max_with_its_own_rule(select):
    """In the pool's own order (shuffles break vote ties otherwise) fixed N_max with the table's rule is
    the consensus: labels from any other rule than the chosen one would fall short of 1."""
    from optscale.policies.learned.cv import fit_auto

    batch = build_batch(scored_pool(), orders=1)
    table = fit_auto(batch, 6, select, "n", 2, budget=0.6, labels="consensus")
    assert table.fitted["labels"] == "consensus" and "agreement" in table.fitted["note"]
    # fixed N_max with the table's own rule is its consensus by definition, whichever rule was chosen
    assert table.calibration["fixed_n_max_accuracy"] == 1.0
    gold = fit_auto(batch, 6, select, "n", 2, budget=0.6)
    assert gold.fitted["labels"] == "gold" and gold.calibration["fixed_n_max_accuracy"] < 1.0


def test_fit_table_takes_consensus_labels_too():
    from optscale.policies.learned import fit_table

    batch = build_batch(scored_pool(), orders=1)
    table = fit_table(batch, 6, "majority", budget=0.7, labels="consensus")
    assert table.fitted["labels"] == "consensus" and table.calibration["fixed_n_max_accuracy"] == 1.0
    with pytest.raises(InputError) as info:
        fit_table(batch, 6, "majority", budget=0.7, labels="silver")
    assert info.value.where == "labels"


def test_cli_policy_fit_on_a_traffic_folder_with_consensus_labels(traffic, cli, tmp_path):
    table = tmp_path / "t.json"
    code, out, err = cli("policy", "fit", traffic, "--labels", "consensus", "--n-max", 8, "--budget", "0.6",
                         "--folds", 2, "--features", "n", "--select", "best", "--out", table)
    assert code == 0, err
    doc = json.loads(table.read_text())
    assert doc["fitted"]["labels"] == "consensus" and doc["calibration"]["pool"] == "traffic"
    assert doc["calibration"]["fixed_n_max_accuracy"] == 1.0 and "labels: consensus" in out
    code, out, err = cli("replay", traffic, "--policy", "learned", "--n-max", 8, "--set", f"table={table}",
                         "--labels", "consensus")  # its own calibration problems: refused, as with gold
    assert code == 2 and "--set table" in err


def test_cli_policy_fit_refuses_traffic_with_gold_labels_and_too_few_samples(traffic, cli, tmp_path):
    table = tmp_path / "t.json"
    code, out, err = cli("policy", "fit", traffic, "--n-max", 8, "--budget", "0.6", "--out", table)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "jsonl:1 field answer" in err and "--labels consensus" in err
    code, out, err = cli("policy", "fit", traffic, "--labels", "consensus", "--n-max", 9, "--budget", "0.6",
                         "--out", table)
    assert code == 2 and err.startswith("error: --n-max: ") and "fewest: 8" in err, err
    code, out, err = cli("policy", "fit", traffic, "--labels", "bronze", "--n-max", 8, "--budget", "0.6",
                         "--out", table)
    assert code == 2 and err.startswith("error: --labels: "), err
    assert not table.exists()
