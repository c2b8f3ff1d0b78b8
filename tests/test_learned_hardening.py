"""The learned package (issue 14): one file per concern, a pydantic table file that refuses hand edits,
and fits refused on pools a table cannot be fitted on."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import run_cli, toy_pool
from optscale.errors import InputError
from optscale.policies import make_policy
from optscale.policies.learned import fit_table
from optscale.replay import build_batch


@pytest.fixture(scope="module")
def calib():
    return build_batch(toy_pool(problems=60, samples=8, seed=11), orders=2, seed=1)


def test_every_name_of_the_old_module_is_importable_from_the_package():
    import optscale.policies.learned as learned
    from optscale.policies import Learned

    for name in ("FORMAT", "Learned", "StoppingTable", "file_sha256", "fit_table", "load_table", "table_states",
                 "table_cells", "DEFAULT_BINS", "DEFAULT_AGREE_CAP", "DEFAULT_SHRINK", "DEFAULT_LENGTH_BINS",
                 "MAX_BINS", "MAX_AGREE_CAP", "MAX_LENGTH_BINS", "MAX_TABLE_CELLS", "PROBLEM_KEY_TEXT"):
        assert hasattr(learned, name), name
    assert learned.Learned is Learned and learned.__file__.endswith("__init__.py")


def _write(tmp_path, data, edit):
    data = json.loads(json.dumps(data))
    edit(data)
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("edit, located", [
    (lambda d: d["calibration"].update(sha256="0" * 63 + "g"), "field calibration.sha256"),
    (lambda d: d["calibration"].update(sha256="abc"), "field calibration.sha256"),
    (lambda d: d["calibration"].update(sha256=12), "field calibration.sha256"),
    (lambda d: d.update(stop_early=True), "field stop_early"),
    (lambda d: d["settings"].update(threshold=0.5), "field settings.threshold"),
    (lambda d: d["calibration"].update(note="mine"), "field calibration.note"),
    (lambda d: d["fitted"].update(accuracy_claimed=1.0), "field fitted.accuracy_claimed"),
    (lambda d: d["decisions"][2].update(extra="S"), "field decisions[2].extra"),
    (lambda d: d["decisions"][2].update(any="SSSSSSS"), "field decisions[2]"),  # not a column of this table
])
def test_hand_edited_tables_with_a_bad_sha256_or_extra_keys_are_refused(calib, tmp_path, edit, located):
    table = fit_table(calib, 8, budget=0.5, source={"pool": "calib.jsonl", "sha256": "ab" * 32})
    path = _write(tmp_path, table.to_json(), edit)
    with pytest.raises(InputError) as info:
        make_policy("learned", 8, table=str(path))
    assert info.value.where == "settings.table" and info.value.detail.startswith(f"{path} {located}:"), info.value


def test_a_first_format_table_is_still_read(calib, tmp_path, monkeypatch):
    table = fit_table(calib, 8, budget=0.5, source={"pool": "calib.jsonl", "sha256": "ab" * 32})
    data = table.to_json()
    data["format"] = "optscale-stopping-table/1"
    del data["settings"]["margin_cap"], data["settings"]["mix"], data["decisions_mix"], data["digest"]  # v1 had none
    for row in data["decisions"]:
        row.pop("margin", None)
    path = tmp_path / "v1.json"
    path.write_text(json.dumps(data))
    back = make_policy("learned", 8, table=str(path)).stopping_table()
    np.testing.assert_array_equal(back.stop, table.stop)


def _short_pool(tmp_path, short_every=2):
    problems = toy_pool(problems=20, samples=8, seed=3)
    for i, p in enumerate(problems):
        p.id, p.question = f"short/{i}", f"short question {i}"
        if i % short_every == 0:
            p.samples = p.samples[:4]
    rows = [{"id": p.id, "question": p.question, "answer": p.answer,
             "samples": [{"answer": s.answer, "score": s.score, "tokens": s.tokens, "correct": s.correct}
                         for s in p.samples]} for p in problems]
    path = tmp_path / "calib.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("select", ["best", "weighted"])
def test_fit_refuses_problems_with_fewer_than_n_max_samples_naming_them(tmp_path, monkeypatch, capsys, select):
    pool = _short_pool(tmp_path)
    out = tmp_path / "t.json"
    out.write_text("keep me")
    code, _, err = run_cli(["policy", "fit", pool, "--n-max", 8, "--budget", 0.5, "--select", select, "--out", out],
                           monkeypatch, capsys)
    assert code == 2 and err.startswith("error: --n-max: "), err
    assert "10 of 20 problems" in err and "fewest: 4" in err and "'short/0', 'short/2'" in err, err
    assert "and 5 more" in err and "Traceback" not in err
    assert out.read_text() == "keep me"  # nothing already written is lost


def test_fit_refuses_a_one_problem_pool(tmp_path, monkeypatch, capsys):
    pool = _short_pool(tmp_path, short_every=1000)
    pool.write_text(pool.read_text().splitlines()[0] + "\n")
    code, _, err = run_cli(["policy", "fit", pool, "--n-max", 8, "--lambda", 0, "--select", "best",
                            "--out", tmp_path / "t.json"], monkeypatch, capsys)
    assert code == 2 and f"{pool}: has 1 problem(s)" in err and "at least 2" in err, err
    assert not (tmp_path / "t.json").exists()


def test_library_fit_refuses_short_and_single_problem_pools(calib):
    from optscale.replay import subset

    with pytest.raises(InputError) as info:
        fit_table(subset(calib, np.array([0])), 8, lam=0.0)
    assert "has 1 problem(s)" in info.value.detail
    with pytest.raises(InputError) as info:
        fit_table(calib, 8, lam=0.0) and fit_table(build_batch(toy_pool(problems=10, samples=8, seed=2, ragged=True)),
                                                   8, lam=0.0)
    assert info.value.where == "n_max" and "fewest" in info.value.detail


def test_a_table_edited_by_hand_is_refused_by_its_digest(calib, tmp_path):
    """Hostile probe (issue 14): a hand-edited table (a changed decision, a changed calibration sha256, no
    digest) was accepted. Every table written by `policy fit` carries the sha256 of its content."""
    table = fit_table(calib, 8, budget=0.5, source={"pool": "calib.jsonl", "sha256": "ab" * 32})
    path = table.save(tmp_path / "t.json")
    data = json.loads(path.read_text())
    assert len(data["digest"]) == 64
    make_policy("learned", 8, table=str(path))  # as written: accepted
    edits = {
        "sha256": lambda d: d["calibration"].update(sha256="cd" * 32),
        "decision": lambda d: d["decisions"][0].update(other="".join("C" if c == "S" else "S"
                                                                     for c in d["decisions"][0]["other"])),
        "budget": lambda d: d["settings"].update(budget=0.9),
    }
    for name, edit in edits.items():
        bad = json.loads(json.dumps(data))
        edit(bad)
        (tmp_path / f"{name}.json").write_text(json.dumps(bad))
        with pytest.raises(InputError, match="field digest: does not match") as info:
            make_policy("learned", 8, table=str(tmp_path / f"{name}.json"))
        assert info.value.where == "settings.table"
    del data["digest"]
    (tmp_path / "none.json").write_text(json.dumps(data))
    with pytest.raises(InputError, match="field digest: missing"):
        make_policy("learned", 8, table=str(tmp_path / "none.json"))
