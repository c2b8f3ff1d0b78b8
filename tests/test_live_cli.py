"""``optscale run`` and ``optscale pool`` end to end against the fake server, including kill -9 and resume."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import live_fakes as fakes
import pytest

from conftest import kill_cli_after, lines, run_cli
from optscale.errors import InputError
from optscale.live.config import build_config
from optscale.live.runs import RunFolder, RunStore
from optscale.live.secrets import Redactor
from optscale.pools import iter_pool
from optscale.report import write_run_report


def dataset(tmp_path: Path, k: int = 4) -> Path:
    path = tmp_path / "problems.jsonl"
    rows = []
    for i in range(k):
        q = f"Problem c{i}: how many apples?"
        rows.append({"id": f"c{i}", "question": q, "answer": fakes.fake_gold(q)})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run_args(data, base_url, out, *extra):
    return ["run", data, "--base-url", base_url, "--model", fakes.MODEL, "--scorer", "confidence",
            "--out", out, "--no-progress", "--no-report", "--retries", "2", "--idle-timeout", "2", *extra]


def free_url() -> str:
    """A server URL where nothing listens (the port was free a moment ago)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/v1"


def test_run_writes_a_consistent_run_folder_and_resumes_without_new_requests(tmp_path, monkeypatch, capsys):
    data, out = dataset(tmp_path), tmp_path / "run"
    with fakes.FakeServer() as server:
        code, _, err = run_cli(run_args(data, server.base_url, out, "--policy", "optscale", "--n-max", "8",
                                        "--set", "s_min=0.9", "--api-key", "sk-not-stored", "--seed", "5"),
                               monkeypatch, capsys)
        assert code == 0, err
        requests = len(server.served)
        code, _, err2 = run_cli(run_args(data, server.base_url, out, "--policy", "optscale", "--n-max", "8",
                                         "--set", "s_min=0.9", "--seed", "5", "--concurrency", "2"),
                                monkeypatch, capsys)
        assert code == 0 and len(server.served) == requests and "resumed" in err2
    assert "problems finished" in err and "4 / 4" in err and "pool:" in err
    config = (out / "config.json").read_text()
    assert "sk-not-stored" not in config
    assert json.loads(config)["identity"]["policy_settings"] == {"s_min": 0.9}
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


@pytest.mark.parametrize("again", [["--set", "s_min=0.90"], ["--set", "s_min=9e-1"], "config"])
def test_the_same_setting_written_differently_resumes_the_same_run(again, tmp_path, monkeypatch, capsys):
    data, out = dataset(tmp_path, 2), tmp_path / "run"
    with fakes.FakeServer() as server:
        code, _, err = run_cli(run_args(data, server.base_url, out, "--n-max", "4", "--set", "s_min=0.9"),
                               monkeypatch, capsys)
        assert code == 0, err
        served = len(server.served)
        if again == "config":
            config = tmp_path / "run.toml"
            config.write_text("[policy_settings]\ns_min = 0.9\n")
            again = ["--config", config]
        code, _, err = run_cli(run_args(data, server.base_url, out, "--n-max", "4", *again), monkeypatch, capsys)
    assert code == 0, err
    assert "resumed" in err and len(server.served) == served


def test_a_folder_written_with_settings_stored_as_text_still_resumes(tmp_path, monkeypatch, capsys):
    """Older versions stored ``--set`` values as typed (``"0.9"``); such a folder is the same run."""
    data, out = dataset(tmp_path, 2), tmp_path / "run"
    config = store_config(data, out, n_max=4, policy_settings={"s_min": "0.9"})
    assert config.identity()["policy_settings"] == {"s_min": 0.9}
    RunStore(out).prepare(config.identity() | {"policy_settings": {"s_min": "0.9"}}, config.runtime())
    with fakes.FakeServer() as server:
        code, _, err = run_cli(run_args(data, server.base_url, out, "--n-max", "4", "--set", "s_min=0.9"),
                               monkeypatch, capsys)
    assert code == 0 and "resumed" in err, err


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
    ("no_logprobs", "error: --scorer: the server returned no token logprobs"),
    ("policy_setting", "error: --set alpha_typo: policy 'optscale' has no setting 'alpha_typo'"),
    ("policy_value", "error: --set s_min: Input should be less than 1"),
    ("n_max", "error: --n-max: Input should be greater than or equal to 1"),
    ("scorer_setting", "error: --scorer-set temperature: scorer 'judge' has no setting 'temperature'"),
    ("scorer", "error: --scorer: unknown scorer 'oracle'; choose from"),
    ("policy", "error: --policy: unknown policy 'nope'; choose from"),
    ("no_question", "problem 'c9' has no 'question' text"),
    ("missing_model", "error: --model: required"),
    ("temperature", "error: --temperature: Input should be greater than or equal to 0"),
])
def test_bad_input_gives_one_clear_line_and_leaves_no_run_folder(case, expected, tmp_path, monkeypatch, capsys):
    data, out = dataset(tmp_path), tmp_path / "run"
    config = fakes.FakeConfig(logprobs=case != "no_logprobs")
    with fakes.FakeServer(config) as server:
        args = run_args(data, server.base_url, out)
        if case == "model":
            args[args.index(fakes.MODEL)] = "gpt-99"
        extra = {"policy_setting": ["--set", "alpha_typo=1"], "policy_value": ["--set", "s_min=7"],
                 "n_max": ["--n-max", "0"], "policy": ["--policy", "nope"], "temperature": ["--temperature", "-1"]}
        args += extra.get(case, [])
        if case == "scorer_setting":
            args[args.index("confidence")] = "judge"
            args += ["--scorer-set", "temperature=0"]
        if case == "scorer":
            args[args.index("confidence")] = "oracle"
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
    assert code == 2 and expected in err and "Traceback" not in err, err
    assert not (out / "samples.jsonl").exists() and not (out / "config.json").exists()


def test_run_help_shows_bracketed_defaults_and_placeholders(monkeypatch, capsys):
    """rich used to read ``[stream]``, ``[test]``, ``[question]`` ... as markup and drop them."""
    import typer.rich_utils

    # typer reads TERMINAL_WIDTH once, at import: set the width it already took instead.
    monkeypatch.setattr(typer.rich_utils, "MAX_WIDTH", 400)
    code, out, _ = run_cli(["run", "--help"], monkeypatch, capsys)
    assert code == 0
    help_lines: dict[str, str] = {}
    for line in out.splitlines():
        if line.startswith("│ --"):
            flag = line.split()[1]
            help_lines[flag] = ""
        if help_lines and line.startswith("│"):
            help_lines[flag] += " " + " ".join(line.strip("│ ").split())
    for flag, shown in [("--stream", "[default: stream]"), ("--split", "[default: test]"),
                        ("--question-field", "[default: question]"), ("--answer-field", "[default: answer]"),
                        ("--id-field", "[default: id]"), ("--temperature", "[default: 0.7]"),
                        ("--template", "{question}"), ("--n-max", "[default: 16]")]:
        assert shown in help_lines[flag], help_lines[flag]
    for name in ("prm", "prm-local", "judge", "confidence", "api_key", "OPTSCALE_JUDGE_API_KEY"):
        assert name in help_lines["--scorer-set"] + help_lines["--scorer"]
    assert "optscale-t" in help_lines["--policy"] and "[default: optscale]" in help_lines["--policy"]


@pytest.mark.parametrize("kind", ["proc", "file"])
def test_an_unwritable_out_is_refused_before_any_server_is_contacted(kind, tmp_path, monkeypatch, capsys):
    out = Path("/proc/optscale-x") if kind == "proc" else tmp_path / "a-file"
    if kind == "file":
        out.write_text("keep me")
    code, _, err = run_cli(run_args(dataset(tmp_path, 1), free_url(), out), monkeypatch, capsys)
    assert code == 2 and "error: --out: " in err and "cannot reach" not in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1
    if kind == "file":
        assert out.read_text() == "keep me"


def test_the_generator_key_goes_to_the_generator_only(tmp_path, monkeypatch, capsys):
    """The judge's server gets its own key (``--scorer-set api_key`` or its env var), never ``--api-key``."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPTSCALE_JUDGE_API_KEY", raising=False)
    data = dataset(tmp_path, 1)
    gen, judge = fakes.FakeServer(), fakes.FakeServer()
    seen: dict[str, set] = {"gen": set(), "judge": set()}
    for name, server in (("gen", gen), ("judge", judge)):
        async def record(request, call_next, name=name):
            seen[name].add(request.headers.get("authorization"))
            return await call_next(request)
        server.app.middleware("http")(record)
    with gen, judge:
        base = run_args(data, gen.base_url, tmp_path / "a", "--n-max", "2", "--policy", "bon", "--api-key", "sk-gen")
        base[base.index("confidence")] = "judge"
        assert run_cli(base + ["--scorer-set", f"base_url={judge.base_url}"], monkeypatch, capsys)[0] == 0
        assert seen == {"gen": {"Bearer sk-gen"}, "judge": {None}}
        base[base.index(tmp_path / "a")] = tmp_path / "b"
        code, _, err = run_cli(base + ["--scorer-set", f"base_url={judge.base_url}", "--scorer-set",
                                       "api_key=sk-judge"], monkeypatch, capsys)
        assert code == 0, err
        assert seen["judge"] == {None, "Bearer sk-judge"} and seen["gen"] == {"Bearer sk-gen"}
        monkeypatch.setenv("OPTSCALE_JUDGE_API_KEY", "sk-judge-env")
        base[base.index(tmp_path / "b")] = tmp_path / "c"
        assert run_cli(base + ["--scorer-set", f"base_url={judge.base_url}"], monkeypatch, capsys)[0] == 0
    assert "sk-judge-env" in {str(k).removeprefix("Bearer ") for k in seen["judge"]}
    assert seen["gen"] == {"Bearer sk-gen"}
    for folder in "abc":
        stored = "".join(p.read_text() for p in (tmp_path / folder).iterdir() if p.is_file())
        assert "sk-" not in stored


def test_url_credentials_are_never_stored_or_printed(tmp_path, monkeypatch, capsys):
    data, out = dataset(tmp_path, 2), tmp_path / "run"
    with fakes.FakeServer() as server:
        url = server.base_url.replace("http://", "http://alice:HUNTER2PW@")
        code, _, err = run_cli(run_args(data, url, out, "--policy", "bon", "--n-max", "2"), monkeypatch, capsys)
        assert code == 0, err
        plain = json.loads((out / "config.json").read_text())["identity"]
        code, _, err2 = run_cli(run_args(data, server.base_url, out, "--policy", "bon", "--n-max", "2"),
                                monkeypatch, capsys)
        assert code == 0 and "resumed" in err2  # credentials are not part of the run's identity
    written = "".join(p.read_text() for p in out.rglob("*") if p.is_file() and p.suffix in (".json", ".jsonl"))
    assert "HUNTER2PW" not in written + err and "alice" not in written
    assert json.loads((out / "config.json").read_text())["identity"] == plain
    code, _, err = run_cli(run_args(data, free_url().replace("http://", "http://alice:HUNTER2PW@"), tmp_path / "x"),
                           monkeypatch, capsys)
    assert code == 2 and "cannot reach" in err and "HUNTER2PW" not in err, err


def test_a_server_error_that_echoes_the_key_is_masked_in_the_log_and_on_screen(tmp_path, monkeypatch, capsys):
    data, out = dataset(tmp_path, 1), tmp_path / "run"
    with fakes.FakeServer(fakes.FakeConfig(fail_keys=("c0",))) as server:
        @server.app.middleware("http")
        async def echo(request, call_next):
            if request.url.path.endswith("/chat/completions"):
                body = await request.json()
                if "Say OK" not in json.dumps(body):
                    from fastapi.responses import JSONResponse
                    return JSONResponse({"error": {"message": f"bad key {request.headers.get('authorization')}"}},
                                        500)
            return await call_next(request)

        code, _, err = run_cli(run_args(data, server.base_url, out, "--policy", "bon", "--n-max", "2",
                                        "--retries", "0", "--max-failures", "1", "--api-key", "sk-SECRET-KEY-1"),
                               monkeypatch, capsys)
    assert code == 2 and "did not finish" in err, err
    failed = [r for r in lines(out / "samples.jsonl") if r["type"] == "failed"]
    assert failed and all("sk-SECRET-KEY-1" not in json.dumps(r) for r in failed)
    assert "sk-SECRET-KEY-1" not in err


def test_the_store_masks_known_secrets_in_every_line_it_writes(tmp_path):
    store = RunStore(tmp_path, redact=Redactor(["sk-LEAKED-KEY"]))
    store.prepare({"model": "m"}, {"note": "sk-LEAKED-KEY"})
    store.open()
    asyncio.run(store.append({"type": "failed", "id": "a#0", "problem": "a", "index": 0, "tokens": 0,
                              "error": "HTTP 401: bad key sk-LEAKED-KEY"}))
    asyncio.run(store.finish({"id": "a", "note": "sk-LEAKED-KEY"}))
    store.close()
    written = "".join(p.read_text() for p in tmp_path.iterdir() if p.is_file())
    assert "sk-LEAKED-KEY" not in written and written.count("***") == 3


def test_printed_errors_never_show_a_known_key_whatever_raised_them(tmp_path, monkeypatch, capsys):
    from optscale.errors import OptscaleError
    from optscale.live import runner

    async def leaky(config, listener=None):
        raise OptscaleError(f"something echoed {config.client.api_key.get_secret_value()}")

    monkeypatch.setattr(runner, "run_live", leaky)
    code, _, err = run_cli(run_args(dataset(tmp_path, 1), free_url(), tmp_path / "run", "--api-key",
                                    "sk-ECHOED-KEY"), monkeypatch, capsys)
    assert code == 2 and "something echoed ***" in err and "sk-ECHOED-KEY" not in err


def store_config(data: Path, out: Path, **flags):
    """The configuration ``optscale run`` builds from these flags (to write a run folder through the store)."""
    values = {"dataset": str(data), "out": str(out), "base_url": ["http://127.0.0.1:1/v1"], "model": fakes.MODEL,
              "scorer": "confidence"} | flags
    return build_config({}, values)


def test_a_log_with_negative_or_absurd_usage_is_flagged_not_fatal(tmp_path, monkeypatch, capsys):
    """An older version stored a bad server's usage; writing the pool and re-running must not crash."""
    data, out = dataset(tmp_path, 2), tmp_path / "run"
    config = store_config(data, out, policy="bon", n_max=2)
    store = RunStore(out)
    store.prepare(config.identity(), config.runtime())
    store.open()
    text = "q=0.5000\n\nThe answer is \\boxed{1}."
    bad = [-5, 10**30]
    for i, tokens in enumerate(bad):
        asyncio.run(store.append({"type": "sample", "id": f"c0#{i}", "problem": "c0", "index": i, "score": 0.5,
                                  "answer": "1", "tokens": tokens, "wasted_tokens": 0, "prompt_tokens": -1,
                                  "text": text}))
    store.close()
    with fakes.FakeServer() as server:
        code, _, err = run_cli(run_args(data, server.base_url, out, "--policy", "bon", "--n-max", "2"),
                               monkeypatch, capsys)
    assert code == 0 and "Traceback" not in err, err
    c0 = next(p for p in lines(out / "problems.jsonl") if p["id"] == "c0")
    assert c0["n_samples"] == 2 and c0["tokens"] == 0 and c0["prompt_tokens"] is None
    state = RunStore(out).load()
    assert all(s["usage_invalid"] and s["tokens"] == 0 for s in state.log("c0").samples)
    [pool_c0] = [p for p in iter_pool(out / "pool.jsonl") if p.id == "c0"]
    assert [s.tokens for s in pool_c0.samples] == [0, 0] and pool_c0.samples[0].text == text


def test_the_store_keeps_texts_on_disk_and_the_pool_reads_them_from_the_log(tmp_path, monkeypatch, capsys):
    data, out = dataset(tmp_path, 2), tmp_path / "run"
    with fakes.FakeServer() as server:
        assert run_cli(run_args(data, server.base_url, out, "--policy", "bon", "--n-max", "3"), monkeypatch,
                       capsys)[0] == 0
    logged = [r for r in lines(out / "samples.jsonl") if r["type"] == "sample"]
    state = RunStore(out).load()
    assert all("text" not in s for log in state.logs.values() for s in log.samples)
    (out / "pool.jsonl").unlink()
    from optscale.live.datasets import DatasetSpec, load_problems

    assert RunStore(out).write_pool(load_problems(DatasetSpec(str(data)))) == out / "pool.jsonl"
    pool = list(iter_pool(out / "pool.jsonl"))
    assert len(pool) == 2
    for p in pool:
        assert [s.text for s in p.samples] == [r["text"] for r in logged if r["problem"] == p.id]


@pytest.mark.parametrize("kind", ["bytes", "gzip"])
def test_dataset_encoding_errors_are_located_and_gzip_is_read(kind, tmp_path, monkeypatch, capsys):
    import gzip

    path = tmp_path / ("bad.jsonl" if kind == "bytes" else "problems.jsonl.gz")
    row = {"id": "g0", "question": "Problem g0: how many?", "answer": fakes.fake_gold("Problem g0: how many?")}
    if kind == "bytes":
        path.write_bytes(json.dumps(row).encode() + b"\n" + b'{"id": "g1", "question": "caf\xe9"}\n')
    else:
        path.write_bytes(gzip.compress((json.dumps(row) + "\n").encode()))
    with fakes.FakeServer() as server:
        code, _, err = run_cli(run_args(path, server.base_url, tmp_path / "run", "--policy", "bon", "--n-max", "1"),
                               monkeypatch, capsys)
    if kind == "bytes":
        assert code == 2 and f"{path}:2: not UTF-8 text" in err and "Traceback" not in err, err
    else:
        assert code == 0, err
        assert [p["id"] for p in lines(tmp_path / "run" / "problems.jsonl")] == ["g0"]


def test_the_runner_closes_the_generator_when_the_scorer_cannot_be_built(tmp_path, monkeypatch):
    from optscale.live import runner

    closed = []
    real = runner.build_generator

    def generator(config):
        gen = real(config)
        original = gen.aclose

        async def aclose():
            closed.append(True)
            await original()

        gen.aclose = aclose
        return gen

    def no_scorer(config):
        raise InputError("cannot load the PRM", "scorer_settings.model")

    monkeypatch.setattr(runner, "build_generator", generator)
    monkeypatch.setattr(runner, "build_run_scorer", no_scorer)
    config = store_config(dataset(tmp_path, 1), tmp_path / "run")
    with pytest.raises(InputError, match="cannot load the PRM"):
        asyncio.run(runner.run_live(config))
    assert closed == [True]


def test_a_different_run_in_an_existing_folder_is_refused(tmp_path, monkeypatch, capsys):
    data, out = dataset(tmp_path, 2), tmp_path / "run"
    with fakes.FakeServer() as server:
        assert run_cli(run_args(data, server.base_url, out, "--policy", "bon", "--n-max", "2"), monkeypatch,
                       capsys)[0] == 0
        code, _, err = run_cli(run_args(data, server.base_url, out, "--policy", "optscale"), monkeypatch, capsys)
    assert code == 2 and "error: --out: " in err and "holds a different run" in err
    assert "policy: 'bon' stored, 'optscale' now" in err


def test_unfinished_problems_exit_non_zero_and_finish_on_the_next_run(tmp_path, monkeypatch, capsys):
    data, out = dataset(tmp_path, 3), tmp_path / "run"
    args = run_args(data, "", out, "--policy", "bon", "--n-max", "2", "--max-failures", "1", "--retries", "0")
    with fakes.FakeServer(fakes.FakeConfig(fail_keys=("c1",))) as server:
        args[args.index("--base-url") + 1] = server.base_url
        code, _, err = run_cli(args, monkeypatch, capsys)
        assert code == 2 and "1 problem(s) did not finish" in err and "run the same command again" in err
        assert sorted(p["id"] for p in lines(out / "problems.jsonl")) == ["c0", "c2"]
        server.config.fail_keys = ()
        code, _, err = run_cli(args, monkeypatch, capsys)
    assert code == 0, err
    problems = lines(out / "problems.jsonl")
    assert sorted(p["id"] for p in problems) == ["c0", "c1", "c2"]
    c1 = next(p for p in problems if p["id"] == "c1")
    assert c1["n_samples"] == 2 and c1["n_failed"] >= 1  # the failures of the first session stay on record


def test_kill_9_at_any_moment_then_resume_loses_and_repeats_nothing(tmp_path, monkeypatch, capsys):
    data, out = dataset(tmp_path, 4), tmp_path / "run"
    config = fakes.FakeConfig(token_latency=0.01, min_tokens=10, max_tokens=40)
    with fakes.FakeServer(config) as server:
        args = run_args(data, server.base_url, out, "--policy", "bon", "--n-max", "6", "--concurrency", "3")
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
    data, out = dataset(tmp_path, 2), tmp_path / "run"
    with fakes.FakeServer() as server:
        args = [a for a in run_args(data, server.base_url, out, "--policy", "bon", "--n-max", "2")
                if a not in ("--no-progress", "--no-report")]
        code, _, err = run_cli(args, monkeypatch, capsys)
    assert code == 0, err
    assert "problems" in err and "saved" in err  # the progress bar's last frame
    assert (out / "report" / "summary.json").exists() and "report:" in err
    summary = json.loads((out / "report" / "summary.json").read_text())
    assert summary["n_max"] == 2 and summary["total_prompt_tokens"] > 0


def test_unknown_prompt_tokens_are_reported_as_unknown_not_zero(tmp_path, monkeypatch, capsys):
    """llama.cpp streams no usage: the prompt's size is unknown, and every summary says so."""
    data, out = dataset(tmp_path, 2), tmp_path / "run"
    with fakes.FakeServer(fakes.FakeConfig(usage_in_stream=False)) as server:
        args = [a for a in run_args(data, server.base_url, out, "--policy", "bon", "--n-max", "2")
                if a not in ("--no-progress", "--no-report")]
        code, _, err = run_cli(args, monkeypatch, capsys)
    assert code == 0, err
    assert all(p["prompt_tokens"] is None for p in lines(out / "problems.jsonl"))
    assert "prompt tokens" in err and "unknown" in err
    summary = json.loads((out / "report" / "summary.json").read_text())
    assert summary["total_prompt_tokens"] is None and "unknown" in (out / "report" / "table.md").read_text()


def test_the_run_report_reads_the_budget_the_store_writes(tmp_path):
    data, out = dataset(tmp_path, 3), tmp_path / "run"
    config = store_config(data, out, policy="bon", n_max=8)
    store = RunStore(out)
    store.prepare(config.identity(), config.runtime())
    store.open()
    for i in range(3):
        asyncio.run(store.finish({"id": f"c{i}", "correct": i != 1, "n_samples": 2 + i, "tokens": 100 * (i + 1),
                                  "prompt_tokens": 10, "stop_reason": "n_max"}))
    store.close()
    assert RunFolder(out).n_max() == 8
    files = write_run_report(out)
    summary = json.loads(files[0].read_text())
    assert summary["n_max"] == 8 and summary["samples_saved_vs_budget"] == pytest.approx(1 - 3.0 / 8)
    assert summary["total_prompt_tokens"] == 30 and summary["problems"] == 3
    with pytest.raises(InputError, match="problems.jsonl"):
        write_run_report(tmp_path / "missing")


def test_the_completion_endpoint_with_a_config_file(tmp_path, monkeypatch, capsys):
    data, out = dataset(tmp_path, 2), tmp_path / "run"
    with fakes.FakeServer() as server:
        config = tmp_path / "run.yaml"
        config.write_text(f"dataset: {data}\nbase_url: {server.base_url}\nmodel: {fakes.MODEL}\nscorer: confidence\n"
                          "policy: bon\nn_max: 3\nendpoint: completion\nchat_markup: llama3\n"
                          "system: You are careful.\n")
        code, _, err = run_cli(["run", "--config", config, "--out", out, "--no-progress", "--no-report"],
                               monkeypatch, capsys)
    assert code == 0, err
    identity = json.loads((out / "config.json").read_text())["identity"]
    assert identity["endpoint"] == "completion" and identity["chat_markup"] == "llama3"
    assert all(p["n_samples"] == 3 and p["correct"] is not None for p in lines(out / "problems.jsonl"))


def test_without_the_live_extra_run_says_what_to_install(monkeypatch, capsys):
    import importlib.util
    import sys

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "httpx" else real(name, *a))
    monkeypatch.delitem(sys.modules, "optscale.cli.live")
    code, _, err = run_cli(["run", "--help"], monkeypatch, capsys)
    assert code == 2 and "pip install 'optscale[live]'" in err and "Traceback" not in err
