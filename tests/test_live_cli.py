"""``optscale run`` and ``optscale pool`` end to end against the fake server, including kill -9 and resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

fakes = pytest.importorskip("live_fakes", reason="the fake server needs fastapi and uvicorn (pip install '.[local]')")

from optscale.pools import iter_pool  # noqa: E402
from conftest import kill_cli_after, lines, run_cli


def dataset(tmp_path: Path, k: int = 4) -> Path:
    path = tmp_path / "problems.jsonl"
    rows = []
    for i in range(k):
        q = f"Problem c{i}: how many apples?"
        rows.append({"id": f"c{i}", "question": q, "answer": fakes.fake_gold(q)})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path



def run_args(data, server, out, *extra):
    return ["run", data, "--base-url", server.base_url, "--model", fakes.MODEL, "--scorer", "confidence",
            "--out", out, "--no-progress", "--no-report", "--retries", "2", "--idle-timeout", "2", *extra]


def test_run_writes_a_consistent_run_folder_and_resumes_without_new_requests(tmp_path, monkeypatch, capsys):
    data, out = dataset(tmp_path), tmp_path / "run"
    with fakes.FakeServer() as server:
        code, _, err = run_cli(run_args(data, server, out, "--policy", "optscale", "--n-max", "8", "--set", "s_min=0.9",
                                 "--api-key", "sk-not-stored", "--seed", "5"), monkeypatch, capsys)
        assert code == 0, err
        requests = len(server.served)
        code, _, err2 = run_cli(run_args(data, server, out, "--policy", "optscale", "--n-max", "8", "--set", "s_min=0.9",
                                  "--seed", "5", "--concurrency", "2"), monkeypatch, capsys)
        assert code == 0 and len(server.served) == requests and "resumed" in err2
    assert "problems finished" in err and "4 / 4" in err and "pool:" in err
    config = (out / "config.json").read_text()
    assert "sk-not-stored" not in config and json.loads(config)["identity"]["policy_settings"] == {"s_min": "0.9"}
    problems = lines(out / "problems.jsonl")
    assert [p["id"] for p in problems] and sorted(p["id"] for p in problems) == ["c0", "c1", "c2", "c3"]
    samples = lines(out / "samples.jsonl")
    for p in problems:
        assert {"id", "answer", "correct", "n_samples", "tokens", "stop_reason"} <= set(p)
        mine = [s for s in samples if s["problem"] == p["id"]]
        assert p["n_samples"] == len([s for s in mine if s["type"] == "sample"]) <= 8
        assert p["tokens"] == sum(s["tokens"] + s.get("wasted_tokens", 0) for s in mine)
    assert sum(p["tokens"] for p in problems) == server.sent_tokens() - 2  # minus the check's 2-token probe
    pool = list(iter_pool(out / "pool.jsonl"))
    assert [len(p.samples) for p in pool] == [next(q["n_samples"] for q in problems if q["id"] == p.id) for p in pool]


def test_pool_draws_the_full_budget_for_offline_replay(tmp_path, monkeypatch, capsys):
    data, out = dataset(tmp_path, 3), tmp_path / "pool"
    with fakes.FakeServer() as server:
        args = ["pool", data, "--base-url", server.base_url, "--model", fakes.MODEL, "--scorer", "judge",
                "--n", "5", "--out", out, "--no-progress", "--n-per-request", "2"]
        code, _, err = run_cli(args, monkeypatch, capsys)
    assert code == 0, err
    pool = list(iter_pool(out / "pool.jsonl"))
    assert [len(p.samples) for p in pool] == [5, 5, 5]
    assert all(0 <= s.score <= 1 and s.text and s.correct is not None for p in pool for s in p.samples)
    assert json.loads((out / "config.json").read_text())["identity"]["policy"] == "bon"


@pytest.mark.parametrize("case, expected", [
    ("unreachable", "error: --base-url: cannot reach http://127.0.0.1:"),
    ("model", "error: --model: http://127.0.0.1:"),
    ("no_logprobs", "error: --scorer confidence: the server returned no token logprobs"),
    ("policy_setting", "error: --set alpha_typo: policy 'optscale' has no setting 'alpha_typo'"),
    ("scorer_setting", "error: --scorer-set: scorer 'judge' has no setting 'temperature'"),
    ("no_question", "problem 'c9' has no 'question' text"),
    ("missing_model", "error: --model: required"),
])
def test_bad_input_gives_one_clear_line_and_leaves_no_run_folder(case, expected, tmp_path, monkeypatch, capsys):
    data, out = dataset(tmp_path), tmp_path / "run"
    config = fakes.FakeConfig(logprobs=case != "no_logprobs")
    with fakes.FakeServer(config) as server:
        args = run_args(data, server, out)
        if case == "model":
            args[args.index(fakes.MODEL)] = "gpt-99"
        if case == "policy_setting":
            args += ["--set", "alpha_typo=1"]
        if case == "scorer_setting":
            args[args.index("confidence")] = "judge"
            args += ["--scorer-set", "temperature=0"]
        if case == "no_question":
            with data.open("a") as f:
                f.write(json.dumps({"id": "c9", "answer": "1"}) + "\n")
        if case == "missing_model":
            i = args.index("--model")
            del args[i:i + 2]
        if case != "unreachable":
            code, _, err = run_cli(args, monkeypatch, capsys)
    if case == "unreachable":  # the server is gone now
        code, _, err = run_cli(args, monkeypatch, capsys)
    assert code == 2 and expected in err and "Traceback" not in err
    assert not (out / "samples.jsonl").exists() and not (out / "config.json").exists()


def test_a_different_run_in_an_existing_folder_is_refused(tmp_path, monkeypatch, capsys):
    data, out = dataset(tmp_path, 2), tmp_path / "run"
    with fakes.FakeServer() as server:
        assert run_cli(run_args(data, server, out, "--policy", "bon", "--n-max", "2"), monkeypatch, capsys)[0] == 0
        code, _, err = run_cli(run_args(data, server, out, "--policy", "optscale"), monkeypatch, capsys)
    assert code == 2 and "holds a different run" in err and "policy: 'bon' stored, 'optscale' now" in err


def test_unfinished_problems_exit_non_zero_and_finish_on_the_next_run(tmp_path, monkeypatch, capsys):
    data, out = dataset(tmp_path, 3), tmp_path / "run"
    with fakes.FakeServer(fakes.FakeConfig(fail_keys=("c1",))) as server:
        code, _, err = run_cli(run_args(data, server, out, "--policy", "bon", "--n-max", "2", "--max-failures", "1",
                                 "--retries", "0"), monkeypatch, capsys)
        assert code == 2 and "1 problem(s) did not finish" in err and "run the same command again" in err
        assert sorted(p["id"] for p in lines(out / "problems.jsonl")) == ["c0", "c2"]
        server.config.fail_keys = ()
        code, _, err = run_cli(run_args(data, server, out, "--policy", "bon", "--n-max", "2", "--max-failures", "1",
                                 "--retries", "0"), monkeypatch, capsys)
    assert code == 0, err
    problems = lines(out / "problems.jsonl")
    assert sorted(p["id"] for p in problems) == ["c0", "c1", "c2"]
    c1 = next(p for p in problems if p["id"] == "c1")
    assert c1["n_samples"] == 2 and c1["n_failed"] >= 1  # the failures of the first session stay on record


def test_kill_9_at_any_moment_then_resume_loses_and_repeats_nothing(tmp_path, monkeypatch, capsys):
    data, out = dataset(tmp_path, 4), tmp_path / "run"
    config = fakes.FakeConfig(token_latency=0.01, min_tokens=10, max_tokens=40)
    with fakes.FakeServer(config) as server:
        args = run_args(data, server, out, "--policy", "bon", "--n-max", "6", "--concurrency", "3")
        samples = out / "samples.jsonl"
        before = kill_cli_after(args, samples, 7)
        assert (out / ".lock").exists()  # left behind by the killed process; the next run takes it over
        code, _, err = run_cli(args, monkeypatch, capsys)
        assert code == 0, err
    after = lines(samples)
    assert after[: len(before)] == before  # nothing rewritten
    ids = [r["id"] for r in after]
    assert len(ids) == len(set(ids))
    problems = lines(out / "problems.jsonl")
    assert len(problems) == 4 and all(p["n_samples"] == 6 for p in problems)
    assert sum(p["tokens"] for p in problems) == sum(r["tokens"] + r.get("wasted_tokens", 0) for r in after)


def test_the_report_and_progress_bar_are_written(tmp_path, monkeypatch, capsys):
    pytest.importorskip("optscale.report", reason="the report module belongs to the offline tools")
    data, out = dataset(tmp_path, 2), tmp_path / "run"
    with fakes.FakeServer() as server:
        args = [a for a in run_args(data, server, out, "--policy", "bon", "--n-max", "2")
                if a not in ("--no-progress", "--no-report")]
        code, _, err = run_cli(args, monkeypatch, capsys)
    assert code == 0, err
    assert "problems" in err and "saved" in err  # the progress bar's last frame
    assert (out / "report" / "summary.json").exists() and "report:" in err
    assert json.loads((out / "report" / "summary.json").read_text())["n_max"] == 2


def test_the_completion_endpoint_with_a_config_file(tmp_path, monkeypatch, capsys):
    data, out = dataset(tmp_path, 2), tmp_path / "run"
    with fakes.FakeServer() as server:
        config = tmp_path / "run.yaml"
        config.write_text(f"dataset: {data}\nbase_url: {server.base_url}\nmodel: {fakes.MODEL}\nscorer: confidence\n"
                          "policy: bon\nn_max: 3\nendpoint: completion\nchat_markup: llama3\n"
                          "system: You are careful.\n")
        code, _, err = run_cli(["run", "--config", config, "--out", out, "--no-progress", "--no-report"], monkeypatch, capsys)
    assert code == 0, err
    identity = json.loads((out / "config.json").read_text())["identity"]
    assert identity["endpoint"] == "completion" and identity["chat_markup"] == "llama3"
    assert all(p["n_samples"] == 3 and p["correct"] is not None for p in lines(out / "problems.jsonl"))
