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
    # review 9: item 4b (not finite), 4e (port), 10 (query string), 5 (offset and config file places)
    ("temperature_inf", "error: --temperature: Input should be a finite number"),
    ("timeout_inf", "error: --timeout: Input should be a finite number"),
    ("port", "error: --base-url: 'http://127.0.0.1:99999/v1' has an invalid port (use 1-65535)"),
    ("query", "error: --base-url: 'http://127.0.0.1:"),
    ("offset", "error: --offset: skips 99 problems, but "),
    ("config_n_max", "run.toml key n_max: Input should be less than or equal to 65536"),
    ("config_temperature", "run.toml key temperature: Input should be a finite number"),
    ("config_offset", "run.toml key offset: skips 99 problems"),
    ("config_setting", "run.toml key policy_settings.s_min: Input should be less than 1"),
])
def test_bad_input_gives_one_clear_line_and_leaves_no_run_folder(case, expected, tmp_path, monkeypatch, capsys):
    """A bad value is named as the user gave it (flag, or config file and key); no folder is left behind."""
    data, out = dataset(tmp_path), tmp_path / "run"
    config = fakes.FakeConfig(logprobs=case != "no_logprobs")
    with fakes.FakeServer(config) as server:
        args = run_args(data, server.base_url, out)
        if case == "model":
            args[args.index(fakes.MODEL)] = "gpt-99"
        if case in ("port", "query"):
            i = args.index("--base-url") + 1
            args[i] = "http://127.0.0.1:99999/v1" if case == "port" else args[i] + "?api-key=QSECRET42"
        if case.startswith("config_"):
            toml = tmp_path / "run.toml"
            toml.write_text({"config_n_max": "n_max = 100000000000000\n", "config_temperature": "temperature = inf\n",
                             "config_offset": "offset = 99\n", "config_setting": "[policy_settings]\ns_min = 7\n"}[case])
            args += ["--config", toml]
        extra = {"policy_setting": ["--set", "alpha_typo=1"], "policy_value": ["--set", "s_min=7"],
                 "n_max": ["--n-max", "0"], "policy": ["--policy", "nope"], "temperature": ["--temperature", "-1"],
                 "temperature_inf": ["--temperature", "inf"], "timeout_inf": ["--timeout", "1e400"],
                 "offset": ["--offset", "99"]}
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
    assert code == 2 and expected in err and "Traceback" not in err and "QSECRET42" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert not out.exists()  # review 9 item 13: not even an empty folder (the unreachable server included)


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


def test_the_store_masks_known_secrets_in_error_values_only(tmp_path):
    """Masking runs over the values that may echo a key (a server's error), never over whole lines.

    Review 9 item 1: with ``--api-key test`` every ``"test"`` in the folder (the dataset split)
    became ``***`` and the run could not resume; with ``token`` every ``tokens`` field was renamed.
    """
    store = RunStore(tmp_path, redact=Redactor(["token", "test"]))
    store.prepare({"model": "m", "split": "test"}, {"note": "test"})
    store.open()
    asyncio.run(store.append({"type": "failed", "id": "a#0", "problem": "a", "index": 0, "tokens": 0,
                              "error": "HTTP 401: bad key Bearer token"}))
    asyncio.run(store.append({"type": "sample", "id": "a#1", "problem": "a", "index": 1, "tokens": 5, "score": 0.5,
                              "answer": "test", "text": "a test token"}))
    asyncio.run(store.finish({"id": "a", "tokens": 5, "note": "test"}))
    store.close()
    failed, sample = lines(tmp_path / "samples.jsonl")
    assert failed["error"] == "HTTP 401: bad key Bearer ***" and failed["tokens"] == 0
    assert sample["answer"] == "test" and sample["text"] == "a test token" and sample["tokens"] == 5
    assert lines(tmp_path / "problems.jsonl") == [{"id": "a", "tokens": 5, "note": "test"}]
    assert json.loads((tmp_path / "config.json").read_text()) == {"identity": {"model": "m", "split": "test"},
                                                                 "runtime": {"note": "test"}}
    assert RunStore(tmp_path).compatible({"model": "m", "split": "test"})


def test_the_store_refuses_a_value_json_cannot_hold_before_writing_anything(tmp_path):
    """Review 9 item 4b: an infinite setting crashed json.dumps in prepare (a ValueError, an empty folder)."""
    out = tmp_path / "run"
    with pytest.raises(InputError, match="inf is not a finite number") as info:
        RunStore(out).prepare({"model": "m", "policy_settings": {"gain": float("inf")}}, {})
    assert info.value.where == "policy_settings.gain" and not out.exists()
    with pytest.raises(InputError) as info:
        RunStore(out).prepare({"model": "m"}, {"timeout": float("nan")})
    assert info.value.where == "timeout" and not out.exists()


@pytest.mark.parametrize("secret", ["key:test", "key:token", "url:answer:boxed"])
def test_keys_that_are_common_words_leave_an_intact_resumable_folder_with_no_secret(secret, tmp_path, monkeypatch,
                                                                                   capsys):
    """Review 9 item 1, end to end: a key that is also a word in the records never rewrites them.

    A failing request makes the server echo the Authorization it received into an error
    that is logged; that echo is masked, and nothing else changes.
    """
    data, out = dataset(tmp_path, 2), tmp_path / "run"
    kind, _, value = secret.partition(":")
    with fakes.FakeServer(fakes.FakeConfig(faults=[None, "echo_key_500"])) as server:
        url = server.base_url.replace("http://", f"http://{value}@") if kind == "url" else server.base_url
        args = run_args(data, url, out, "--policy", "bon", "--n-max", "2", "--retries", "0",
                        *(["--api-key", value] if kind == "key" else []))
        code, _, err = run_cli(args, monkeypatch, capsys)
        assert code == 0, err
        served = len(server.served)
        sent = {auth for _, auth in server.auth}
        code, _, err = run_cli(args, monkeypatch, capsys)
        assert code == 0 and "resumed" in err and len(server.served) == served, err
    auth = sent - {None}
    assert len(auth) == 1  # what the server was sent (Bearer key, or Basic user:password)
    [echoed] = auth
    config = json.loads((out / "config.json").read_text())
    assert config["identity"]["split"] == "test" and "api_key" not in config["runtime"]
    samples = lines(out / "samples.jsonl")
    [failed] = [r for r in samples if r["type"] == "failed"]
    assert failed["error"].endswith(f"Incorrect API key provided: {echoed.split()[0]} ***")
    kept = [r for r in samples if r["type"] == "sample"]
    assert len(kept) == 4 and all({"tokens", "answer", "prompt_tokens", "tokens_source"} <= set(r) for r in kept)
    assert all(r["answer"] is not None and r["answer"] in r["text"] for r in kept)
    problems = lines(out / "problems.jsonl")
    assert len(problems) == 2 and all(isinstance(p["tokens"], int) and p["n_samples"] == 2 for p in problems)
    written = "".join(p.read_text() for p in out.rglob("*") if p.is_file() and p.suffix in (".json", ".jsonl"))
    assert "***s" not in written and '"***"' not in written
    assert echoed not in written  # the Authorization as sent: "Bearer <key>" or "Basic <base64 of user:pw>"
    if kind == "url":
        assert echoed.split()[1] not in written and "answer:boxed" not in written
        assert all(r["endpoint"].startswith("http://***@") for r in kept)
        assert config["runtime"]["base_url"][0].startswith("http://***@")
    assert list(iter_pool(out / "pool.jsonl"))


@pytest.mark.parametrize("who", ["generator", "judge"])
def test_a_key_refused_in_the_middle_of_a_run_names_the_flag_that_holds_it(who, tmp_path, monkeypatch, capsys):
    """Review 9 item 5: a mid-run HTTP 401 printed ``error: api_key: ...``, a name nobody typed."""
    from fastapi.responses import JSONResponse

    data, out = dataset(tmp_path, 2), tmp_path / "run"
    gen = fakes.FakeServer(fakes.FakeConfig(faults=[None, "echo_key"] if who == "generator" else []))
    judge = fakes.FakeServer()

    @judge.app.middleware("http")
    async def revoked(request, call_next):  # the checks pass, the run's first judge call is refused
        if request.url.path.endswith("/chat/completions") and "Problem c" in (await request.body()).decode():
            return JSONResponse({"error": {"message": f"key {request.headers.get('authorization')} revoked"}}, 401)
        return await call_next(request)

    with gen, judge:
        args = run_args(data, gen.base_url, out, "--policy", "bon", "--n-max", "2", "--api-key", "sk-GEN-KEY-1")
        if who == "judge":
            args[args.index("confidence")] = "judge"
            args += ["--scorer-set", f"base_url={judge.base_url}", "--scorer-set", "api_key=sk-JUDGE-KEY-2"]
        code, _, err = run_cli(args, monkeypatch, capsys)
    flag = "--api-key" if who == "generator" else "--scorer-set api_key"
    assert code == 2 and f"error: {flag}: HTTP 401 from http://127.0.0.1:" in err and "Traceback" not in err, err
    assert "sk-GEN-KEY-1" not in err and "sk-JUDGE-KEY-2" not in err
    assert json.loads((out / "config.json").read_text())["identity"]["policy"] == "bon"
    lines(out / "samples.jsonl")  # every logged line is whole


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


@pytest.mark.parametrize("where", ["folder", "cwd"])
def test_a_folder_that_holds_something_else_is_never_taken_over(where, tmp_path, monkeypatch, capsys):
    """Review 9 item 2: ``--out DIR`` (or ``--out .``) overwrote pool.jsonl and report/ of any folder."""
    data = dataset(tmp_path, 1)
    other = tmp_path / "mine"
    other.mkdir()
    (other / "pool.jsonl").write_text("keep me\n")
    (other / "notes.txt").write_text("mine\n")
    before = {p.name: p.read_text() for p in other.iterdir()}
    with fakes.FakeServer() as server:
        if where == "cwd":
            monkeypatch.chdir(other)
        code, _, err = run_cli(run_args(data, server.base_url, "." if where == "cwd" else other, "--policy", "bon",
                                        "--n-max", "1"), monkeypatch, capsys)
        assert code == 2 and "error: --out: " in err and "is not empty and holds no run" in err, err
        assert {p.name: p.read_text() for p in other.iterdir()} == before and len(server.served) == 0
        empty = tmp_path / "empty"
        empty.mkdir()
        code, _, err = run_cli(run_args(data, server.base_url, empty, "--policy", "bon", "--n-max", "1"),
                               monkeypatch, capsys)
    assert code == 0 and (empty / "pool.jsonl").exists(), err  # an empty folder is a new run's


def test_unknown_token_counts_are_shown_as_unknown_not_zero(tmp_path, monkeypatch, capsys):
    """Review 9 item 7: a server with no usage, no logprobs and no streaming gave "tokens (all requests) 0"."""
    from fastapi.responses import JSONResponse

    data, out = dataset(tmp_path, 2), tmp_path / "run"
    server, judge = fakes.FakeServer(), fakes.FakeServer()

    @server.app.middleware("http")
    async def bare(request, call_next):  # every answer without usage or logprobs (the judge's server is normal)
        if request.url.path.endswith("/chat/completions"):
            gold = fakes.fake_gold(json.loads(await request.body())["messages"][-1]["content"])
            return JSONResponse({"choices": [{"index": 0, "finish_reason": "stop", "message": {
                "role": "assistant", "content": f"q=0.9000 The answer is \\boxed{{{gold}}}."}}]})
        return await call_next(request)

    with server, judge:
        args = [a for a in run_args(data, server.base_url, out, "--policy", "bon", "--n-max", "2", "--no-stream")
                if a != "--no-report"]
        args[args.index("confidence")] = "judge"
        code, _, err = run_cli(args + ["--scorer-set", f"base_url={judge.base_url}"], monkeypatch, capsys)
        assert code == 0, err
        confidence = run_args(data, server.base_url, tmp_path / "conf", "--no-stream")
        code, _, err2 = run_cli(confidence, monkeypatch, capsys)
    assert "unknown (4 responses uncounted)" in err
    assert all(p["tokens_unknown"] == 2 for p in lines(out / "problems.jsonl"))
    summary = json.loads((out / "report" / "summary.json").read_text())
    assert summary["total_tokens"] is None and summary["uncounted_responses"] == 4
    assert code == 2 and "error: --scorer: the server returned no token logprobs" in err2, err2
    assert not (tmp_path / "conf").exists()


def test_invalid_usage_reports_are_flagged_and_counted_in_the_summary(tmp_path, monkeypatch, capsys):
    """Review 9 item 9: samples with an impossible usage report were not flagged and no summary showed them."""
    data, out = dataset(tmp_path, 1), tmp_path / "run"
    with fakes.FakeServer(fakes.FakeConfig(faults=[None, "negative_usage", "huge_usage", "float_usage"])) as server:
        code, _, err = run_cli(run_args(data, server.base_url, out, "--policy", "bon", "--n-max", "3",
                                        "--in-flight", "1"), monkeypatch, capsys)
    assert code == 0, err
    assert sum(r["flag"] == "usage_invalid" for r in lines(out / "samples.jsonl")) == 3
    assert "flagged samples / failed requests" in err and "3 / 0" in err
    assert "invalid usage reports" in err


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
