"""Regressions of a hostile review: keys with stray whitespace, Ctrl-C in the grader, odd run folders,
absurd ``max_tokens`` and booleans given for numbers."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from pathlib import Path

import httpx
import live_fakes as fakes
import pytest
from pydantic import SecretStr
from serve_fakes import Proxy

from conftest import run_cli
from optscale.errors import InputError
from optscale.live.config import build_config
from optscale.live.secrets import Redactor
from optscale.live.transport import HttpTransport
from optscale.live.types import ClientSettings
from optscale.serve import build_serve_config
from optscale.serve.auth import load_client_keys

MAX_TOKENS_LIMIT = 2**24
KEY_ERROR = "contains a control character, whitespace or a non-ASCII character"
BASE = {"out": "x", "base_url": ["http://127.0.0.1:1/v1"], "model": "m", "scorer": "confidence",
        "dataset": "d.jsonl"}
SERVE = {"upstream": "http://127.0.0.1:1/v1", "model": "m", "scorer": "confidence"}
CHAT = {"model": fakes.MODEL, "messages": [{"role": "user", "content": "Problem h1: how many?"}]}


def dataset(tmp_path: Path, k: int = 2) -> Path:
    path = tmp_path / "problems.jsonl"
    questions = [f"Problem h{i}: how many apples?" for i in range(k)]
    path.write_text("".join(json.dumps({"id": f"h{i}", "question": q, "answer": fakes.fake_gold(q)}) + "\n"
                            for i, q in enumerate(questions)))
    return path


def run_args(data, base_url, out, *extra):
    return ["run", data, "--base-url", base_url, "--model", fakes.MODEL, "--scorer", "confidence", "--n-max", "2",
            "--out", out, "--no-progress", "--no-report", "--retries", "1", "--idle-timeout", "2", *extra]


# -- 1. keys ---------------------------------------------------------------------------------------
def test_run_strips_a_key_and_refuses_one_a_header_cannot_carry(tmp_path, monkeypatch, capsys):
    data = dataset(tmp_path)
    with fakes.FakeServer() as server:
        monkeypatch.setenv("OPENAI_API_KEY", "sk-ENVSECRET123\n")
        code, _, err = run_cli(run_args(data, server.base_url, tmp_path / "a"), monkeypatch, capsys)
        assert code == 0, err
        assert {a for _, a in server.auth} == {"Bearer sk-ENVSECRET123"}
        monkeypatch.setenv("OPENAI_API_KEY", "sk-ENV SECRET456")
        code, _, err = run_cli(run_args(data, server.base_url, tmp_path / "b"), monkeypatch, capsys)
        assert code == 2 and f"--api-key: {KEY_ERROR}" in err and "SECRET456" not in err, err
        monkeypatch.delenv("OPENAI_API_KEY")
        config = tmp_path / "run.toml"
        config.write_text('api_key = "sk-CFGSECRET789\\nx"\n')
        code, _, err = run_cli(run_args(data, server.base_url, tmp_path / "c", "--config", config),
                               monkeypatch, capsys)
        assert code == 2 and f"key api_key: {KEY_ERROR}" in err and "CFGSECRET789" not in err, err
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_scorer_and_transport_keys_are_cleaned_and_checked():
    config = build_config({"scorer_settings": {"api_key": " sk-judge\n"}}, {**BASE, "scorer": "judge"})
    assert config.scorer_config().api_key.get_secret_value() == "sk-judge"
    with pytest.raises(InputError, match=f"scorer_settings.api_key: {KEY_ERROR}") as info:
        build_config({"scorer_settings": {"api_key": "sk-JUDGE\x01SECRET"}}, {**BASE, "scorer": "judge"})
    assert "SECRET" not in str(info.value)
    # a key copied into client settings without validation (how a scorer's reaches its client)
    settings = ClientSettings().model_copy(update={"api_key": SecretStr("sk-copied\r\n")})
    transport = HttpTransport("http://127.0.0.1:1/v1", settings, names="scorer.")
    assert transport.http.headers["authorization"] == "Bearer sk-copied"
    asyncio.run(transport.aclose())
    settings = ClientSettings().model_copy(update={"api_key": SecretStr("sk-COPIED\x7fSECRET")})
    with pytest.raises(InputError, match=f"scorer.api_key: {KEY_ERROR}") as info:
        HttpTransport("http://127.0.0.1:1/v1", settings, names="scorer.")
    assert "SECRET" not in str(info.value)


def test_redactor_masks_a_key_quoted_as_a_repr():
    redact = Redactor(["sk-ENVSECRET123\n", "sk-caf\u00e9-key"])
    text = redact("Illegal header value b'Bearer sk-ENVSECRET123\\n'; 'sk-caf\\xe9-key'; b'sk-caf\\xc3\\xa9-key'")
    assert "SECRET" not in text and "caf" not in text, text


def test_serve_strips_keys_and_refuses_bad_ones_without_showing_them(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    keys = tmp_path / "keys.txt"
    keys.write_text("client-key-1\r\n")
    with fakes.FakeServer() as up, Proxy(up.base_url, n_max=2, api_keys_file=str(keys),
                                         api_key=" upstream-SECRET\n") as px:
        r = httpx.post(px.url("/v1/chat/completions"), json=CHAT, headers={"Authorization": "Bearer client-key-1"})
        assert r.status_code == 200, r.text
        assert {a for _, a in up.auth} == {"Bearer upstream-SECRET"}
    assert "Illegal header" not in caplog.text and "upstream-SECRET" not in caplog.text
    env = {"OPTSCALE_UPSTREAM_API_KEY": "sk-X\n"}
    assert build_serve_config(SERVE, env=env).client.api_key.get_secret_value() == "sk-X"
    for values, env, where in (({}, {"OPTSCALE_UPSTREAM_API_KEY": "sk-UP\nSECRET"}, "OPTSCALE_UPSTREAM_API_KEY"),
                               ({"api_key": "sk-UP SECRET"}, {}, "api_key")):
        with pytest.raises(InputError, match=f"{where}: {KEY_ERROR}") as info:
            build_serve_config({**SERVE, **values}, env=env)
        assert "SECRET" not in str(info.value)
    keys.write_text("# clients\nclient-\x1bSECRET\n")
    with pytest.raises(InputError, match=f"keys.txt:2: {KEY_ERROR}") as info:
        load_client_keys(str(keys), {})
    assert "SECRET" not in str(info.value)
    with pytest.raises(InputError, match=f"OPTSCALE_SERVE_API_KEYS: {KEY_ERROR}") as info:
        load_client_keys(None, {"OPTSCALE_SERVE_API_KEYS": "good-key, caf\u00e9-SECRET"})
    assert "SECRET" not in str(info.value)
    assert load_client_keys(None, {"OPTSCALE_SERVE_API_KEYS": " k-1 ,k-2\n"}).check("Bearer k-2")


# -- 2. Ctrl-C reaches the grading worker too ------------------------------------------------------
def test_the_grading_worker_ignores_sigint(capfd):
    from optscale.answers.grade import _worker, grade_detail

    assert grade_detail("2", "2", timeout=60).correct  # starts the worker
    process = _worker._process
    os.kill(process.pid, signal.SIGINT)
    # The signal is pending before this request arrives: a worker it ends dies before it answers.
    assert grade_detail("3", "3.0", timeout=60).correct
    assert process.is_alive() and _worker._process is process
    assert "KeyboardInterrupt" not in capfd.readouterr().err


# -- 3. a run folder's files must be regular files ---------------------------------------------------
@pytest.mark.parametrize("name", ["samples.jsonl", "problems.jsonl", "config.json", "pool.jsonl", ".lock"])
def test_a_run_folder_file_that_is_not_a_file_is_a_located_error(tmp_path, monkeypatch, capsys, name):
    data, out = dataset(tmp_path), tmp_path / "run"
    with fakes.FakeServer() as server:
        code, _, err = run_cli(run_args(data, server.base_url, out), monkeypatch, capsys)
        assert code == 0, err
        path = out / name
        if path.exists():
            path.rename(tmp_path / "aside")
        path.mkdir()
        code, _, err = run_cli(run_args(data, server.base_url, out), monkeypatch, capsys)
    assert code == 2 and f"error: {path}: " in err and "Errno" not in err and "Traceback" not in err, err


# -- 4. max_tokens has an upper bound --------------------------------------------------------------
def test_max_tokens_is_bounded_in_run_and_serve(tmp_path, monkeypatch, capsys):
    assert build_config({"max_tokens": MAX_TOKENS_LIMIT}, BASE).generation.max_tokens == MAX_TOKENS_LIMIT
    with pytest.raises(InputError, match="max_tokens: Input should be less than or equal to 16777216"):
        build_config({"max_tokens": 99999999999999999999}, BASE)
    with pytest.raises(InputError, match="max_tokens"):
        build_serve_config({**SERVE, "max_tokens": 10**30}, env={})
    code, _, err = run_cli(["run", dataset(tmp_path), "--base-url", "http://127.0.0.1:1/v1", "--model", "m",
                            "--scorer", "confidence", "--out", tmp_path / "r", "--max-tokens", str(10**20)],
                           monkeypatch, capsys)
    assert code == 2 and "--max-tokens" in err and "Traceback" not in err, err
    with fakes.FakeServer() as up, Proxy(up.base_url, n_max=2) as px:
        served = len(up.served)
        for field in ("max_tokens", "max_completion_tokens"):
            r = httpx.post(px.url("/v1/chat/completions"), json={**CHAT, field: 10**30})
            assert r.status_code == 400 and r.json()["error"]["param"] == field, r.text
        assert len(up.served) == served


# -- 5. true/false are not numbers -----------------------------------------------------------------
def test_booleans_are_refused_for_number_settings(tmp_path, monkeypatch, capsys):
    shared = (({"n_max": True}, "n_max"), ({"temperature": False}, "temperature"),
              ({"client": {"retries": True}}, "retries"),
              ({"policy": "beacon", "policy_settings": {"peek": True}}, "policy_settings.peek"))
    run_cases = (*shared, ({"concurrency": True}, "concurrency"),
                 ({"scorer_settings": {"concurrency": True}}, "scorer_settings.concurrency"))
    for values, where in run_cases:
        with pytest.raises(InputError, match=f"^{where}: must be a number, not "):
            build_config(values, {**BASE, "scorer": "judge"})
    for values, where in (*shared, ({"port": False}, "port")):
        with pytest.raises(InputError, match=f"^{where}: must be a number, not "):
            build_serve_config({**SERVE, **values}, env={})
    assert build_config({"stream": False}, BASE).generation.stream is False  # a real boolean setting still is one
    config = tmp_path / "run.yaml"
    config.write_text("n_max: true\n")
    code, _, err = run_cli(["run", dataset(tmp_path), "--base-url", "http://127.0.0.1:1/v1", "--model", "m",
                            "--scorer", "confidence", "--out", tmp_path / "r", "--config", config],
                           monkeypatch, capsys)
    assert code == 2 and f"{config} key n_max: must be a number, not true" in err, err


@pytest.mark.parametrize("url, message", [
    ("http://:hunter2@127.0.0.1:6379/0", "a Redis URL starts with redis://"),
    ("redis://:hunter2@127.0.0.1:6379/zero", "the database is a number"),
    ("redis://:hunter2@127.0.0.1:notaport/0", "is not a URL"),
    ("redis:///0", "no host"),
])
def test_a_malformed_state_url_is_refused_when_the_settings_are_built(url, message):
    # before: only the CLI checked it, so a library caller's server started and never became ready
    with pytest.raises(InputError) as err:
        build_serve_config({**SERVE, "state": url}, env={})
    assert err.value.where == "state" and message in str(err.value) and "hunter2" not in str(err.value)
    assert build_serve_config({**SERVE, "state": "redis://:pw@127.0.0.1:6379/0"}, env={}).state  # well formed: kept
