"""`optscale sweep` and `replay` with --jobs/--backend: the files written equal the serial run's, byte for byte."""

import importlib.util
import json
import os
import pickle
import sys

import pytest

from conftest import run_cli, toy_pool
from optscale.errors import InputError
from optscale.pools import PoolProblem, write_pool
from optscale.replay import build_batch, sweep


def _write(path, seed):
    write_pool(path, [PoolProblem.model_validate({
        "id": p.id, "question": p.question, "answer": p.answer,
        "samples": [{"answer": s.answer, "score": s.score, "tokens": s.tokens, "correct": s.correct}
                    for s in p.samples],
    }) for p in toy_pool(problems=40, samples=12, seed=seed)])
    return path


@pytest.fixture
def cli(monkeypatch, capsys):
    return lambda *args: run_cli(args, monkeypatch, capsys)


@pytest.fixture
def pools(tmp_path):
    return [_write(tmp_path / "first.jsonl", 1), _write(tmp_path / "second.jsonl", 2)]


def files(folder):
    """Every file under ``folder`` (relative path -> bytes); fails on an empty folder."""
    out = {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
    assert out, f"nothing written to {folder}"
    return out


SWEEP = ("sweep", "--policy", "optscale", "--n-max", "4,8", "--s-min", "0.8,0.9", "--alpha", "0.5,0.9", "--orders", 2,
         "--splits", 2)


def sweep_files(cli, tmp_path, name, *args):
    code, _, err = cli(*SWEEP, "--out", tmp_path / name, *args)
    assert code == 0, err
    return files(tmp_path / name)


def need(module):
    """Skip where ``module`` is missing; under CI=true a missing backend fails instead."""
    if importlib.util.find_spec(module) is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{module} is not installed (CI=true: the parallel backends must be tested)")
        pytest.skip(f"{module} is not installed")


def test_sweep_loky_equals_serial(pools, tmp_path, cli):
    serial = sweep_files(cli, tmp_path, "serial", pools[0])
    assert {"grid.csv", "selected.csv", "splits.csv"} <= set(serial)
    assert sweep_files(cli, tmp_path, "loky", pools[0], "--jobs", 2, "--backend", "loky") == serial


def test_sweep_population_prior_loky_equals_serial(pools, tmp_path, cli):
    """A population prior is fitted per split seed: the grid is replayed once per seed, in parts."""
    args = (pools[0], "--set", "priors=population", "--set", "estimator=map")
    serial = sweep_files(cli, tmp_path, "serial", *args)
    assert sweep_files(cli, tmp_path, "loky", *args, "--jobs", 2) == serial


def test_library_sweep_of_a_laid_out_batch_equals_serial():
    """A ReplayBatch (not a pool read in chunks) is cut into runs of problems too."""
    batch = build_batch(toy_pool(problems=30, samples=8, seed=4), orders=3, seed=5)
    one, two = (sweep(batch, "optscale", [4, 8], [0.8, 0.9], [0.5, 0.9], jobs=jobs) for jobs in (1, 2))
    assert repr(two.grid) == repr(one.grid) and repr(two.selected) == repr(one.selected)


def test_sweep_several_pools_each_in_its_folder(pools, tmp_path, cli):
    both = sweep_files(cli, tmp_path, "both", *pools, "--jobs", 2)
    for pool in pools:  # the same files as sweeping that pool alone
        alone = sweep_files(cli, tmp_path, f"alone-{pool.stem}", pool)
        assert {k.split("/", 1)[1]: v for k, v in both.items() if k.startswith(f"{pool.stem}/")} == alone
    assert sweep_files(cli, tmp_path, "serial", *pools) == both


def test_replay_several_pools_one_report(pools, tmp_path, cli):
    opts = ("--policy", "optscale", "--n-max", 8, "--orders", 2, "--json")
    args = ("replay", *pools, *opts)
    code, serial, err = cli(*args, "--out", tmp_path / "serial")
    assert code == 0, err
    lines = [json.loads(line) for line in serial.splitlines()]
    assert [line["dataset"] for line in lines] == ["first", "second"]
    for pool, line in zip(pools, lines):  # one line per pool, as replaying it alone prints
        code, alone, err = cli("replay", pool, *opts)
        assert code == 0, err
        assert json.loads(alone) == line
    results = (tmp_path / "serial" / "results.csv").read_text().splitlines()
    assert len(results) == 3 and "dataset" in results[0].split(",")  # a header and a row per pool
    code, parallel, err = cli(*args, "--out", tmp_path / "loky", "--jobs", 2)
    assert code == 0, err
    assert parallel == serial
    assert files(tmp_path / "loky") == files(tmp_path / "serial")


@pytest.fixture
def local_ray():
    need("ray")
    import ray

    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 1024**2)
    yield
    ray.shutdown()


@pytest.mark.slow
def test_sweep_ray_equals_serial(pools, tmp_path, cli, local_ray):
    serial = sweep_files(cli, tmp_path, "serial", pools[0])
    assert sweep_files(cli, tmp_path, "ray", pools[0], "--jobs", 2, "--backend", "ray") == serial
    code, out, err = cli("replay", *pools, "--n-max", 8, "--json")
    assert code == 0, err
    assert cli("replay", *pools, "--n-max", 8, "--json", "--jobs", 2, "--backend", "ray")[:2] == (0, out)


@pytest.fixture
def local_dask():
    need("distributed")
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster):
        yield


@pytest.mark.slow
def test_sweep_dask_equals_serial(pools, tmp_path, cli, local_dask):
    serial = sweep_files(cli, tmp_path, "serial", *pools)
    assert sweep_files(cli, tmp_path, "dask", *pools, "--jobs", 2, "--backend", "dask") == serial


def one_error(code, err, place):
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and err.strip().startswith(f"error: {place}: "), err


@pytest.mark.parametrize("command", [("replay",), ("sweep", "--n-max", "8", "--s-min", "0.9", "--alpha", "0.5")])
@pytest.mark.parametrize("args,place,missing", [
    (("--jobs", 0), "--jobs", None),
    (("--jobs", -2), "--jobs", None),
    (("--backend", "spark"), "--backend", None),
    (("--jobs", 2, "--backend", "ray"), "--backend", "ray"),
    (("--jobs", 2, "--backend", "dask"), "--backend", "distributed"),
])
def test_bad_parallel_flags_are_one_located_error(pools, tmp_path, cli, monkeypatch, command, args, place, missing):
    if missing:
        monkeypatch.setitem(sys.modules, missing, None)  # as if not installed: find_spec gives None
    code, _, err = cli(*command, *pools, "--out", tmp_path / "out", *args)
    one_error(code, err, place)
    if missing:
        assert f"optscale[{args[-1]}]" in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_two_pools_with_one_name_are_refused(pools, tmp_path, cli):
    other = tmp_path / "elsewhere"
    other.mkdir()
    twin = _write(other / "first.jsonl", 3)
    one_error(*cli("replay", pools[0], twin, "--jobs", 2)[::2], str(twin))


def test_a_workers_error_keeps_its_place(pools, tmp_path, cli):
    """A bad line in the second pool, read by a worker: the same located error as read in this process."""
    with pools[1].open("a") as f:
        f.write("{not json\n")
    serial = cli("replay", *pools, "--n-max", 8)
    one_error(serial[0], serial[2], f"{pools[1]}:41")
    assert cli("replay", *pools, "--n-max", 8, "--jobs", 2)[::2] == serial[::2]


def test_input_errors_pickle_with_their_place():
    err = pickle.loads(pickle.dumps(InputError("must be at most 1", "settings.alpha")))
    assert (err.where, err.detail) == ("settings.alpha", "must be at most 1")
    assert str(err.renamed({"settings.": "--set "})) == "--set alpha: must be at most 1"
