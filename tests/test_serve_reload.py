"""Stopping tables reloaded without a restart (``POST /v1/optscale/tables/reload``, SIGHUP), and
``/v1/optscale/plan`` answering valid JSON whatever its fit gives."""

from __future__ import annotations

import gzip
import json
import os
import signal
import threading
from types import SimpleNamespace

import httpx
import live_fakes as fakes
import numpy as np
import pytest
from serve_fakes import Proxy, wait_for
from test_serve_shutdown import start_serve

from conftest import toy_pool
from optscale.policies.learned import fit_table
from optscale.replay import build_batch
from optscale.serve.routes import plan as plan_route

MESSAGES = [{"role": "user", "content": "Problem p1: how many?"}]
KEY = "sk-reload"
AUTH = {"Authorization": f"Bearer {KEY}"}


def save_table(directory, name: str = "t4.json", budget: float = 0.3, n_max: int = 4):
    """A stopping table fitted on a toy calibration pool (``budget`` changes its decisions and its bytes)."""
    directory.mkdir(exist_ok=True)
    calib = build_batch(toy_pool(problems=60, samples=n_max, seed=5), orders=2, seed=1)
    return fit_table(calib, n_max, budget=budget).save(directory / name)


def ask(proxy, table: str, **extra) -> httpx.Response:
    return httpx.post(proxy.url("/v1/chat/completions"), headers=AUTH, timeout=60, json={
        "model": "fake-model", "messages": MESSAGES, "optscale": {"policy": "learned", "table": table, "n_max": 4},
        **extra})


def reload(proxy, headers=AUTH) -> httpx.Response:
    return httpx.post(proxy.url("/v1/optscale/tables/reload"), headers=headers, timeout=60)


@pytest.fixture
def keys(tmp_path):
    path = tmp_path / "keys"
    path.write_text(KEY + "\n")
    return str(path)


def test_a_reload_reads_new_and_changed_tables_and_refuses_a_bad_file_keeping_the_old_table(tmp_path, keys):
    tables = tmp_path / "tables"
    save_table(tables)
    with fakes.FakeServer(fakes.FakeConfig(seed=1)) as up, Proxy(up.base_url, n_max=4, tables_dir=str(tables),
                                                                  api_keys_file=keys) as px:
        assert ask(px, "t4.json").status_code == 200
        save_table(tables, "new.json")
        err = ask(px, "new.json").json()["error"]  # not read yet: tables are read at start and on a reload
        assert err["param"] == "optscale.table" and "no stopping table 'new.json'" in err["message"]
        assert reload(px, headers={}).status_code == 401
        r = reload(px)
        assert r.status_code == 200, r.text
        assert {t["name"]: t["status"] for t in r.json()["tables"]} == {"new.json": "loaded", "t4.json": "unchanged"}
        assert ask(px, "new.json").status_code == 200
        assert httpx.get(px.url("/v1/optscale/policies"), headers=AUTH).json()["tables"] == ["new.json", "t4.json"]

        good = (tables / "t4.json").read_text()
        broken = json.loads(good)
        broken["settings"]["agree_cap"] = -1
        (tables / "t4.json").write_text(json.dumps(broken))
        r = reload(px)
        assert r.status_code == 422, r.text
        body = r.json()
        assert body["error"]["code"] == "invalid_table" and body["error"]["param"] == "t4.json"
        assert "t4.json field settings.agree_cap" in body["error"]["message"]
        assert "stays in use" in body["error"]["message"] and str(tables) not in body["error"]["message"]
        [status] = [t for t in body["tables"] if t["name"] == "t4.json"]
        assert status["status"] == "refused" and status["kept_previous"] is True
        assert ask(px, "t4.json").status_code == 200  # the old table stays

        (tables / "new.json").unlink()
        (tables / "t4.json").write_text(good)
        statuses = {t["name"]: t["status"] for t in reload(px).json()["tables"]}
        assert statuses == {"new.json": "removed", "t4.json": "unchanged"}
        assert "no stopping table 'new.json'" in ask(px, "new.json").json()["error"]["message"]


def test_a_bad_table_at_start_is_refused_by_name_when_a_request_asks_for_it(tmp_path):
    tables = tmp_path / "tables"
    tables.mkdir()
    (tables / "bad.json").write_text('{"format": ')
    with fakes.FakeServer(fakes.FakeConfig(seed=1)) as up, Proxy(up.base_url, n_max=4, tables_dir=str(tables)) as px:
        err = ask(px, "bad.json").json()["error"]
        assert err["param"] == "optscale.table"
        assert "was refused when the server read it: bad.json:1: not valid JSON" in err["message"]
        r = reload(px)
        assert r.status_code == 422 and r.json()["tables"] == [
            {"name": "bad.json", "status": "refused", "sha256": None, "error": r.json()["tables"][0]["error"],
             "kept_previous": False}]


def test_an_episode_under_way_keeps_its_table_through_a_reload(tmp_path):
    """A slow episode begun on one table; the file changes and is reloaded while it samples; its record
    names the table it began with, and the next episode the new one."""
    tables = tmp_path / "tables"
    save_table(tables, budget=0.3)
    changed = save_table(tmp_path / "next", budget=0.6)
    slow = fakes.FakeConfig(seed=3, token_latency=0.05, min_tokens=20, max_tokens=20)  # 1 s a sample
    with fakes.FakeServer(slow) as up, Proxy(up.base_url, n_max=4, tables_dir=str(tables), shadow_share=1.0,
                                              traffic_dir=str(tmp_path / "traffic"), in_flight=1) as px:
        first = reload(px).json()["tables"][0]["sha256"]
        before = len(up.served)
        done = threading.Event()
        thread = threading.Thread(target=lambda: (ask(px, "t4.json"), done.set()))
        thread.start()
        wait_for(lambda: len(up.served) > before, 30, "the episode sampling")
        os.replace(changed, tables / "t4.json")
        r = reload(px)
        assert not done.is_set(), "the episode finished before the reload: make its samples slower"
        second = r.json()["tables"][0]
        assert second["status"] == "loaded" and second["sha256"] != first
        thread.join(timeout=60)
        assert ask(px, "t4.json").status_code == 200
        wait_for(lambda: px.service.metrics.traffic_records._value.get() == 2, 60, "both shadow records")
    records = []
    for path in sorted((tmp_path / "traffic").glob("traffic-*.jsonl*")):
        raw = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
        records += [json.loads(line) for line in raw.decode().splitlines()]
    by_time = sorted(records, key=lambda r: r["optscale"]["created"])
    assert [r["optscale"]["table_sha256"] for r in by_time] == [first, second["sha256"]]
    assert all(r["optscale"]["table"] == "t4.json" for r in records)


def test_sighup_reloads_the_tables(tmp_path):
    tables = tmp_path / "tables"
    save_table(tables)
    with fakes.FakeServer(fakes.FakeConfig(seed=1)) as up:
        proc, base = start_serve(["--upstream", up.base_url, "--model", "fake-model", "--scorer", "confidence",
                                  "--n-max", "4", "--tables-dir", str(tables)], tmp_path / "log")
        try:
            def listed() -> list[str]:
                return httpx.get(base + "/v1/optscale/policies").json()["tables"]

            assert listed() == ["t4.json"]
            save_table(tables, "added.json")
            proc.send_signal(signal.SIGHUP)
            wait_for(lambda: listed() == ["added.json", "t4.json"], 30, "the tables reloaded")
            assert proc.poll() is None  # SIGHUP did not stop it
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    logged = " ".join((tmp_path / "log").read_text().split())  # the console log wraps lines
    assert "stopping tables reloaded (SIGHUP): 1 loaded, 1 unchanged" in logged


def test_plan_answers_valid_json_when_the_fit_is_not_finite(tmp_path, monkeypatch):
    nan = np.array([float("nan")])
    monkeypatch.setattr(plan_route, "fit_mle", lambda scores: SimpleNamespace(
        mu=nan, sigma=nan, converged=np.array([False]), flag=np.array([0])))
    with fakes.FakeServer(fakes.FakeConfig(seed=1)) as up, Proxy(up.base_url) as px:
        r = httpx.post(px.url("/v1/optscale/plan"), json={"policy": "bon", "n_max": 4, "scores": [0.5, 0.6]})
    assert r.status_code == 200, r.text
    fit = json.loads(r.text, parse_constant=lambda c: pytest.fail(f"invalid JSON constant {c}"))["fit"]
    assert fit["mu"] is None and fit["sigma"] is None
