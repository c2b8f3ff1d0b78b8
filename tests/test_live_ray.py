"""``optscale run --engine ray``: a local Ray with 2 actors against the fake server.

The single-process run with the same seed is the reference: the Ray run, a run that loses an
actor mid-way, and a run whose driver is killed with SIGKILL and resumed must all leave the
same problems and samples in the run folder, each exactly once. Ray starts once for the module.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import socket
import sys
from pathlib import Path

import live_fakes as fakes
import pytest

from conftest import kill_cli_after, lines, need_module, run_cli
from optscale.errors import InputError
from optscale.live.config import build_config
from optscale.live.runner import run_live
from optscale.live.sampler import Listener

pytestmark = pytest.mark.slow

PROBLEMS = 8


@pytest.fixture(scope="module")
def ray():
    ray = need_module("ray", "the ray extra is not installed (pip install 'optscale[ray]')")
    ray.init(num_cpus=2, object_store_memory=100 * 2**20, include_dashboard=False, logging_level=logging.WARNING)
    yield ray
    ray.shutdown()


class SeededServer(fakes.FakeServer):
    """The fake server made deterministic per request: the request's seed fixes what it draws."""

    async def _generate(self, body, chat):
        if body.get("seed") is not None:  # the draws happen before the first await: no other request interleaves
            self._rng = random.Random(body["seed"])
        return await super()._generate(body, chat)


@pytest.fixture(scope="module")
def server():
    with SeededServer(fakes.FakeConfig(first_token_latency=0.002, token_latency=0.004)) as server:
        yield server


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "problems.jsonl"
    rows = [{"id": f"r{i}", "question": (q := f"Problem r{i}: how many pears?"), "answer": fakes.fake_gold(q)}
            for i in range(PROBLEMS)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def settings(data: Path, server, out: Path, **extra) -> dict:
    """An adaptive run (the optscale policy) whose samples arrive one at a time per problem, with a seed."""
    return {"dataset": str(data), "base_url": [server.base_url], "model": fakes.MODEL, "scorer": "confidence",
            "out": str(out), "n_max": 8, "policy_settings": {"s_min": 0.9}, "seed": 7, "in_flight": 1,
            "problems_in_flight": 1, "retries": 2, **extra}


def run(values: dict, listener: Listener | None = None):
    return asyncio.run(run_live(build_config({}, values), listener))


def folder(out: Path) -> tuple[list[dict], list[dict]]:
    """The run folder's problems and samples (without timings), in id order; ids must be unique."""
    problems = sorted(lines(out / "problems.jsonl"), key=lambda p: p["id"])
    samples = sorted(({k: r.get(k) for k in ("id", "type", "score", "answer", "tokens", "text")}
                      for r in lines(out / "samples.jsonl")), key=lambda r: r["id"])
    assert len({p["id"] for p in problems}) == len(problems)
    assert len({r["id"] for r in samples}) == len(samples)
    return problems, samples


@pytest.fixture(scope="module")
def reference(data, server, tmp_path_factory):
    """The single-process run."""
    out = tmp_path_factory.mktemp("local") / "run"
    outcome = run(settings(data, server, out))
    assert not outcome.unfinished
    problems, samples = folder(out)
    assert len(problems) == PROBLEMS and len({p["n_samples"] for p in problems}) > 1  # adaptive: counts differ
    return problems, samples


def test_a_ray_run_equals_the_single_process_run(ray, data, server, reference, tmp_path):
    out = tmp_path / "run"
    outcome = run(settings(data, server, out, engine="ray", actors=2))
    assert not outcome.unfinished and [r.id for r in outcome.results] == [f"r{i}" for i in range(PROBLEMS)]
    assert folder(out) == reference
    stored = json.loads((out / "config.json").read_text())
    assert stored["runtime"]["engine"] == "ray" and stored["runtime"]["actors"] == 2
    assert "engine" not in stored["identity"]
    # the engine settings are not the run's identity: the finished run is taken up again by a local session
    again = run(settings(data, server, out))
    assert again.resumed and not again.unfinished and folder(out) == reference


REQUEUED = re.compile(r"(\d+) unfinished problem\(s\) re-queued")


class KillAnActor(Listener):
    """Kills one of the run's actors when the first problem arrives at the driver."""

    def __init__(self, ray):
        self.ray, self.killed = ray, None

    def on_problem(self, result) -> None:
        if self.killed is None:
            names = sorted(n["name"] if isinstance(n, dict) else n for n in self.ray.util.list_named_actors())
            self.killed = next(n for n in names if n.startswith("optscale-worker-"))
            self.ray.kill(self.ray.get_actor(self.killed))


def test_an_actor_killed_mid_run_loses_and_doubles_nothing(ray, data, server, reference, tmp_path, caplog):
    out = tmp_path / "run"
    listener = KillAnActor(ray)
    with caplog.at_level(logging.WARNING, logger="optscale.live.ray_engine"):
        outcome = run(settings(data, server, out, engine="ray", actors=2), listener)
    assert listener.killed is not None and not outcome.unfinished
    requeued = [int(m.group(1)) for r in caplog.records if (m := REQUEUED.search(r.getMessage()))]
    assert requeued and requeued[0] > 0, caplog.text  # the dead actor had work left, and the others did it
    assert folder(out) == reference


def test_resume_after_kill_9_of_the_driver(ray, data, server, reference, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    config = tmp_path / "ray.toml"
    address = ray.get_runtime_context().gcs_address
    config.write_text(f'engine = "ray"\nactors = 2\nray_address = "{address}"\n')
    args = ["run", data, "--config", config, "--base-url", server.base_url, "--model", fakes.MODEL,
            "--scorer", "confidence", "--out", out, "--n-max", "8", "--set", "s_min=0.9", "--seed", "7",
            "--in-flight", "1", "--problems-in-flight", "1", "--no-progress", "--no-report"]
    kill_cli_after(args, out / "problems.jsonl", 2)
    before = (out / "problems.jsonl").read_text().splitlines()
    assert 2 <= len(before) < PROBLEMS
    code, _, err = run_cli(args, monkeypatch, capsys)  # resumed on the module's Ray
    assert code == 0, err
    assert (out / "problems.jsonl").read_text().splitlines()[: len(before)] == before  # nothing rewritten
    assert folder(out) == reference


def test_the_actors_import_the_drivers_optscale(ray, data, server, tmp_path):
    import optscale
    from optscale.live.ray_engine import ProblemWorker

    config = build_config({}, settings(data, server, tmp_path / "run"))
    actor = ray.remote(ProblemWorker).remote(config)
    try:
        assert ray.get(actor.start.remote(), timeout=120) == {"version": optscale.__version__,
                                                               "path": optscale.__file__}
    finally:
        ray.kill(actor)


def test_an_address_where_no_ray_listens_is_a_located_error_and_leaves_no_folder(ray, data, server, tmp_path,
                                                                                   monkeypatch):
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # as in a fresh process
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{sock.getsockname()[1]}"  # nothing listens there
    out = tmp_path / "run"
    with pytest.raises(InputError) as err:
        run(settings(data, server, out, engine="ray", ray_address=address))
    assert err.value.where == "ray_address" and address in err.value.detail
    assert not out.exists()


def test_a_cluster_ray_cannot_join_is_a_located_error(ray, data, server, tmp_path, monkeypatch):
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: (_ for _ in ()).throw(ConnectionError("no cluster there")))
    with pytest.raises(InputError) as err:
        run(settings(data, server, tmp_path / "run", engine="ray", ray_address="auto"))
    assert err.value.where == "ray_address" and "no cluster there" in err.value.detail


def test_without_the_ray_extra_the_engine_says_what_to_install(data, server, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    out = tmp_path / "run"
    with pytest.raises(InputError) as err:
        run(settings(data, server, out, engine="ray"))
    assert err.value.where == "engine" and "optscale[ray]" in err.value.detail and not out.exists()


def pool_lines(path: Path) -> list[dict]:
    """A pool's problems in id order, each with its samples in id-independent (sorted) order."""
    out = []
    for problem in sorted(lines(path), key=lambda p: p["id"]):
        problem["samples"] = sorted(problem["samples"], key=lambda s: json.dumps(s, sort_keys=True))
        out.append(problem)
    return out


def test_pool_takes_the_engine_flags_and_draws_the_same_pool(ray, data, server, tmp_path, monkeypatch, capsys):
    def pool(out: Path, *extra) -> Path:
        code, _, err = run_cli(["pool", data, "--base-url", server.base_url, "--model", fakes.MODEL, "--scorer",
                                "confidence", "--out", out, "--n", "3", "--seed", "3", "--limit", "4",
                                "--no-progress", *extra], monkeypatch, capsys)
        assert code == 0, err
        return out / "pool.jsonl"

    local = pool(tmp_path / "local")
    on_ray = pool(tmp_path / "ray", "--engine", "ray", "--actors", "2", "--actor-gpus", "0",
                  "--ray-address", ray.get_runtime_context().gcs_address)
    assert len(lines(local)) == 4 and pool_lines(on_ray) == pool_lines(local)


@pytest.mark.parametrize("flag, value", [("--engine", "dask"), ("--actors", "0"), ("--actor-gpus", "-1")])
def test_bad_engine_settings_name_their_flag(flag, value, data, tmp_path, monkeypatch, capsys):
    code, _, err = run_cli(["run", data, "--base-url", "http://127.0.0.1:9/v1", "--model", fakes.MODEL,
                            "--scorer", "confidence", "--out", tmp_path / "run", flag, value], monkeypatch, capsys)
    assert code == 2 and flag in err, err
    assert not (tmp_path / "run").exists()


def test_a_server_check_failing_in_the_actors_is_the_local_runs_error(ray, data, server, tmp_path):
    errors = []
    for engine in ("local", "ray"):
        out = tmp_path / engine
        with pytest.raises(InputError) as err:
            run(settings(data, server, out, model="no-such-model", engine=engine))
        errors.append((err.value.where, err.value.detail))
        assert not out.exists()
    assert errors[0] == errors[1] and "no-such-model" in errors[1][1]


def test_a_key_refused_in_an_actor_mid_run_names_the_flag_that_holds_it(ray, data, tmp_path, monkeypatch,
                                                                        capsys):
    from fastapi.responses import JSONResponse

    refusing = fakes.FakeServer()

    @refusing.app.middleware("http")
    async def revoked(request, call_next):  # the actors' checks pass, the run's requests are refused
        if request.url.path.endswith("/chat/completions") and "Problem r" in (await request.body()).decode():
            return JSONResponse({"error": {"message": f"key {request.headers.get('authorization')} revoked"}}, 401)
        return await call_next(request)

    out = tmp_path / "run"
    with refusing:
        code, _, err = run_cli(["run", data, "--base-url", refusing.base_url, "--model", fakes.MODEL, "--scorer",
                                "confidence", "--out", out, "--api-key", "sk-GEN-KEY-1", "--no-progress",
                                "--no-report", "--engine", "ray", "--ray-address",
                                ray.get_runtime_context().gcs_address], monkeypatch, capsys)
    assert code == 2 and "error: --api-key: HTTP 401 from http://127.0.0.1:" in err and "Traceback" not in err, err
    assert "sk-GEN-KEY-1" not in err
    assert json.loads((out / "config.json").read_text())["runtime"]["engine"] == "ray"
