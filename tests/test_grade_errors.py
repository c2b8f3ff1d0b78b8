"""Grader errors are never swallowed: logged with the answer's place (rate-limited), counted, and
reported next to timeouts by ``replay``, ``sweep`` and ``validate`` (issue 14 item 6)."""

from __future__ import annotations

import collections
import importlib
import json
import logging

import pytest

from optscale.pools import PoolProblem, iter_pool, write_pool

from conftest import run_cli, need_module

grading = importlib.import_module("optscale.answers.grade")


@pytest.fixture
def cli(monkeypatch, capsys):
    return lambda *args: run_cli(args, monkeypatch, capsys)


@pytest.fixture
def failing_grader(monkeypatch):
    """A grader on which math-verify raises for every answer (the worker answers status 'error')."""
    monkeypatch.setattr(grading._worker, "grade", lambda gold, prediction, timeout: grading.Grade(
        False, "error", f"ValueError: cannot parse {prediction}"))
    grading._grade_cached.cache_clear()
    yield
    grading._grade_cached.cache_clear()


def ungraded_pool(path, problems=3, samples=4):
    write_pool(path, [PoolProblem.model_validate({"id": f"p{i}", "question": "q", "answer": "2", "samples": [
        {"answer": f"{i}{j}", "score": 0.5, "tokens": 10} for j in range(samples)]}) for i in range(problems)])
    return path


def test_a_math_verify_exception_is_an_error_verdict_with_its_reason(monkeypatch):
    math_verify = need_module("math_verify", "math-verify is a core dependency")

    def broken(*args, **kwargs):
        raise ValueError("sympy gave up")

    monkeypatch.setattr(math_verify, "parse", broken)
    verdict = grading._verify("2", "2")
    assert (verdict.correct, verdict.status) == (False, "error")
    assert verdict.detail == "ValueError: sympy gave up"


def test_errors_are_logged_with_the_place_and_counted(failing_grader, caplog):
    before = grading.COUNTS.copy()
    with caplog.at_level(logging.WARNING, logger=grading.__name__):
        assert grading.grade_detail("2", "x+", where="pool.jsonl:7 samples[3]").status == "error"
        grading.grade_detail("2", "x+", where="pool.jsonl:9 samples[0]")  # the same pair: cached, logged once
    [record] = caplog.records
    message = record.getMessage()
    assert message.startswith("pool.jsonl:7 samples[3]: grading 'x+' against gold '2' failed")
    assert "ValueError: cannot parse x+" in message and "counted as wrong" in message
    assert grading.grading_problems(before) == {"timeouts": 0, "errors": 1}


def test_error_logs_are_rate_limited(failing_grader, caplog, monkeypatch):
    monkeypatch.setattr(grading, "COUNTS", collections.Counter())
    with caplog.at_level(logging.WARNING, logger=grading.__name__):
        for k in range(grading.ERRORS_LOGGED + 5):
            grading.grade("2", f"bad{k}")
    assert grading.COUNTS["errors"] == grading.ERRORS_LOGGED + 5
    assert len(caplog.records) == grading.ERRORS_LOGGED
    assert "further grading errors are counted, not logged" in caplog.records[-1].getMessage()


def test_pool_reading_names_the_line_and_sample(failing_grader, tmp_path, caplog):
    pool = ungraded_pool(tmp_path / "pool.jsonl", problems=2, samples=2)
    with caplog.at_level(logging.WARNING, logger=grading.__name__):
        problems = list(iter_pool(pool))
    assert not any(s.correct for p in problems for s in p.samples)
    places = [r.getMessage().split(": grading")[0] for r in caplog.records]
    assert places == [f"{pool}:{line} samples[{j}]" for line in (1, 2) for j in (0, 1)]


def test_replay_and_sweep_report_grading_errors(failing_grader, tmp_path, cli):
    pool = ungraded_pool(tmp_path / "pool.jsonl")
    code, out, err = cli("replay", pool, "--policy", "bon", "--n-max", 4, "--orders", 1, "--json")
    assert code == 0, err
    assert "grading failed on 12 answer(s); they count as wrong" in err
    assert any("failed on 12" in note for note in json.loads(out)["notes"])
    grading._grade_cached.cache_clear()
    code, out, err = cli("sweep", pool, "--policy", "bon", "--n-max", 4, "--orders", 1, "--out", tmp_path / "sw")
    assert code == 0, err
    assert "grading failed on 12 answer(s)" in err


def test_validate_reports_grading_errors_next_to_timeouts(failing_grader, tmp_path, cli):
    code, out, err = cli("validate", ungraded_pool(tmp_path / "pool.jsonl", problems=2, samples=3))
    assert code == 0, err
    rows = {line.split("│")[1].strip(): line.split("│")[2].strip() for line in out.splitlines() if "│" in line}
    assert rows["answers whose grading failed (counted wrong)"] == "6"
    assert rows["answers whose grading timed out (counted wrong)"] == "0"


def test_a_live_run_reports_grading_errors_in_its_summary_and_report(failing_grader, tmp_path, cli):
    need_module("httpx", "the live extra is not installed")
    import live_fakes as fakes

    data = tmp_path / "problems.jsonl"
    questions = [f"Problem c{i}: how many apples?" for i in range(3)]
    data.write_text("".join(json.dumps({"id": f"c{i}", "question": q, "answer": fakes.fake_gold(q)}) + "\n"
                            for i, q in enumerate(questions)))
    with fakes.FakeServer() as server:
        code, _, err = cli("run", data, "--base-url", server.base_url, "--model", fakes.MODEL, "--scorer",
                           "confidence", "--out", tmp_path / "run", "--no-progress", "--policy", "bon", "--n-max", 2)
    assert code == 0, err
    assert "0 / 3" in err, err
    summary = json.loads((tmp_path / "run" / "report" / "summary.json").read_text())
    assert (summary["grading_timeouts"], summary["grading_errors"]) == (0, 3)
