"""One meaning per name, library logic in the library (issue 14 item 5): the replay's outcome is
``ReplayOutcome``, problem files have one reader (the same ids for runs and predicted priors), the
library never probes a checkout for ``shared/data``, result files are read by ``optscale.report``,
and ``run``/``pool`` declare their shared flags once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_cli, need_module
from optscale.errors import InputError


def test_the_replay_outcome_is_replay_outcome_and_the_old_name_warns():
    import optscale.replay as replay
    from optscale.policies import Outcome as EpisodeOutcome

    assert replay.ReplayOutcome.__name__ == "ReplayOutcome" and replay.ReplayOutcome is not EpisodeOutcome
    assert "Outcome" not in replay.__all__
    with pytest.warns(DeprecationWarning, match="ReplayOutcome"):
        assert replay.Outcome is replay.ReplayOutcome
    with pytest.warns(DeprecationWarning):
        from optscale.replay.metrics import Outcome  # noqa: F401
    with pytest.raises(AttributeError):
        replay.NoSuchName  # noqa: B018


def test_predictor_and_live_runs_read_a_problem_file_with_the_same_ids(tmp_path):
    need_module("sklearn", "the predictor extra is not installed")
    from optscale.live.datasets import DatasetSpec, load_problems
    from optscale.predictor import Problems

    path = tmp_path / "bench.jsonl"
    rows = [{"id": 0, "question": "a"}, {"id": False, "question": "b", "level": "Level 3"},
            {"id": 1.5, "question": "c"}, {"question": "d", "subject": " Algebra "},
            {"id": "x", "question": "e", "level": 2}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    problems = Problems.from_file(path)
    live_ids = [p.id for p in load_problems(DatasetSpec(str(path)))]
    assert problems.ids == live_ids == ["0", "false", "1.5", "bench/3", "x"]
    assert problems.levels == [None, 3, None, None, 2] and problems.subjects[3] == "Algebra"
    with pytest.warns(DeprecationWarning, match="Problems.from_file"):
        from optscale.predictor import load_problems as old

        assert old(path).ids == problems.ids


def test_shared_data_comes_from_the_environment_only(tmp_path, monkeypatch):
    need_module("sklearn", "the predictor extra is not installed")
    from optscale.predictor import SHARED_DATA_ENV, shared_data_dir

    monkeypatch.delenv(SHARED_DATA_ENV, raising=False)
    assert shared_data_dir() is None  # even in a checkout with ../shared/data beside it
    monkeypatch.setenv(SHARED_DATA_ENV, str(tmp_path))
    assert shared_data_dir() == tmp_path
    monkeypatch.setenv(SHARED_DATA_ENV, str(tmp_path / "missing"))
    assert shared_data_dir() is None


def test_predictor_train_without_data_names_the_flag_and_the_variable(tmp_path, monkeypatch, capsys):
    need_module("sklearn", "the predictor extra is not installed")
    monkeypatch.delenv("OPTSCALE_SHARED_DATA", raising=False)
    code, _, err = run_cli(["predictor", "train", "--out", tmp_path / "m"], monkeypatch, capsys)
    assert code == 2 and "--data" in err and "OPTSCALE_SHARED_DATA" in err, err


def test_result_files_are_read_by_the_library(tmp_path):
    from optscale.report import read_results

    good = tmp_path / "results.csv"
    good.write_text("dataset,policy,n_max,accuracy,ci_low,ci_high,mean_tokens\nmath,bon,16,0.5,0.4,0.6,1000\n")
    assert read_results([good]) == [{"dataset": "math", "policy": "bon", "n_max": 16, "accuracy": 0.5, "ci_low": 0.4,
                                     "ci_high": 0.6, "mean_tokens": 1000.0}]
    bad = tmp_path / "bad.csv"
    bad.write_text("dataset,policy,n_max,accuracy,ci_low,ci_high,mean_tokens\nmath,bon,16,1.5,0.4,0.6,1000\n")
    with pytest.raises(InputError, match="a share from 0 to 1") as info:
        read_results([bad])
    assert info.value.where == f"{bad}:2 field accuracy"


def test_run_and_pool_declare_their_shared_flags_once():
    need_module("httpx", "the live extra is not installed")
    from optscale.cli import live
    from optscale.cli.app import load_command

    params = {name: [p.name for p in load_command(name).params] for name in ("run", "pool")}
    shared = [*live._SOURCE_FLAGS, *live._SAMPLING_FLAGS]
    assert len(shared) == 38 and {"question_field", "show_progress", "engine", "actors"} <= set(shared)
    assert params["pool"] == [*live._SOURCE_FLAGS, "n", *live._SAMPLING_FLAGS]
    assert params["run"] == [*live._SOURCE_FLAGS, "policy", "n_max", "settings", *live._SAMPLING_FLAGS, "report"]
    assert Path(live.__file__).read_text().count("question_field") == 1  # declared once, not per command
