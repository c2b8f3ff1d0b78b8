"""The offline CLI end to end, through the real entry point (no traceback on bad input)."""

import json
import subprocess
import sys

import pytest

from conftest import toy_pool
from optscale.pools import PoolProblem, write_pool


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "optscale", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


@pytest.fixture
def pool_file(tmp_path):
    problems = [PoolProblem.model_validate({
        "id": p.id, "question": p.question, "answer": p.answer,
        "samples": [{"answer": s.answer, "score": s.score, "tokens": s.tokens, "correct": s.correct} for s in p.samples],
    }) for p in toy_pool(problems=30, samples=16)]
    path = tmp_path / "toy.jsonl"
    write_pool(path, problems)
    return path


def test_replay_json(pool_file):
    res = run("replay", pool_file, "--policy", "optscale0", "--n-max", 8, "--orders", 3, "--set", "alpha=0.8", "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert {"accuracy", "mean_samples", "mean_tokens", "bon_curve", "ci_low", "bon_accuracy_same_tokens"} <= set(out)
    assert 3 <= out["mean_samples"] <= 8 and out["settings"]["alpha"] == 0.8


def test_replay_table_and_report(pool_file, tmp_path):
    res = run("replay", pool_file, "--policy", "esc", "--n-max", 16, "--out", tmp_path / "rep")
    assert res.returncode == 0, res.stderr
    assert "esc@16" in res.stdout and (tmp_path / "rep" / "table.md").exists()


@pytest.mark.parametrize("args,place", [
    (("--policy", "nope"), "--policy"),
    (("--set", "alpha=1.5"), "--set alpha"),
    (("--set", "alpha"), "--set"),
    (("--set", "bogus=1"), "--set bogus"),
    (("--n-max", "0"), "--n-max"),
    (("--orders", "0"), "--orders"),
])
def test_bad_flags_name_the_flag(pool_file, args, place):
    res = run("replay", pool_file, *args)
    assert res.returncode != 0
    assert place in res.stderr and "Traceback" not in res.stderr


def test_bad_pool_names_file_and_line(tmp_path, pool_file):
    lines = pool_file.read_text().splitlines()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(lines[0] + "\n" + lines[1].replace('"score": ', '"score": 1', 1) + "\n")
    res = run("replay", bad)
    assert res.returncode != 0 and f"{bad}:2" in res.stderr and "score" in res.stderr
    assert "Traceback" not in res.stderr
    res = run("replay", tmp_path / "missing.jsonl")
    assert res.returncode != 0 and "Traceback" not in res.stderr


def test_sweep_writes_front_and_keeps_existing_outputs_on_error(pool_file, tmp_path):
    out = tmp_path / "sw"
    res = run("sweep", pool_file, "--n-max", "8", "--s-min", "0.8,0.9", "--alpha", "0.5,0.9", "--orders", 2, "--out", out)
    assert res.returncode == 0, res.stderr
    grid = (out / "grid.csv").read_text()
    assert grid.count("\n") == 1 + 2 * 4 and "pareto" in grid.splitlines()[0]
    before = (out / "grid.csv").read_bytes()
    res = run("sweep", pool_file, "--n-max", "8", "--alpha", "0.5,1.5", "--out", out)
    assert res.returncode != 0 and "--set alpha" in res.stderr
    assert (out / "grid.csv").read_bytes() == before


def test_nstar_and_help():
    res = run("nstar", "--mu", "0.8", "--sigma", "0.1", "--s-min", "0.9", "--alpha", "0.9")
    assert res.returncode == 0 and res.stdout.startswith("N* = ")
    res = run("nstar", "--mu", "0.8", "--sigma", "0", "--s-min", "0.9")
    assert res.returncode != 0 and "--sigma" in res.stderr
    res = run("--help")
    for cmd in ("replay", "sweep", "demo", "nstar", "convert", "validate"):
        assert cmd in res.stdout


def test_table_combines_result_files(pool_file, tmp_path):
    for name in ("a", "b"):
        res = run("replay", pool_file, "--policy", "bon", "--n-max", 4, "--orders", 2, "--out", tmp_path / name)
        assert res.returncode == 0, res.stderr
    res = run("table", tmp_path / "a" / "results.csv", tmp_path / "b" / "results.csv", "--format", "latex")
    assert res.returncode == 0, res.stderr
    assert res.stdout.count(r"\multicolumn{2}{c}{toy}") == 1 and "Best-of-N (BoN) ($N=4$)" in res.stdout
    bad = tmp_path / "bad.csv"
    bad.write_text("dataset,policy\nx,bon\n")
    res = run("table", bad)
    assert res.returncode != 0 and f"{bad}:2" in res.stderr
