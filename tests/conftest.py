"""Shared fixtures: small generated pools (no shared data needed), and the one place where a test
may skip for what its machine lacks (:func:`need`)."""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from optscale.stats import truncnorm

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"

pytest_plugins = ("pytester",)  # tests/test_ci_skips.py runs small test files through pytest


def in_ci() -> bool:
    """Whether the tests run under CI (``CI`` set to anything but empty, 0, false or no)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def need(ok: object, reason: str) -> None:
    """Skip the test (or, called at module level, the module) with ``reason`` unless ``ok``.

    Under ``CI=true`` it fails instead: CI installs every extra and has the shared data, so a
    missing optional dependency or data set is a broken CI setup, never a pass by skipping.
    Every skip for a missing dependency or data set goes through here.
    """
    __tracebackhide__ = True  # pytest reports the caller's line
    if ok:
        return
    if in_ci():
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def need_module(name: str, reason: str | None = None):
    """``import name`` (the module), else :func:`need` fails or skips: ``pytest.importorskip`` honest under CI.

    Only a missing module counts as missing; a module that is installed but breaks on import
    raises as it would for a user.
    """
    __tracebackhide__ = True
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (name == exc.name or name.startswith(exc.name + ".")):
            raise
        need(False, f"{reason or name + ' is not installed'} (no module named {exc.name!r})")


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Caches (the embedding model's extraction, token caches) go to a fresh folder, never the user's."""
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    yield
    if old is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = old


def toy_pool(problems=40, samples=16, seed=0, ragged=False, none_rate=0.1):
    """Problems with truncated-normal scores, score-dependent correctness and a few answers."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(problems):
        n = int(rng.integers(max(2, samples // 2), samples + 1)) if ragged else samples
        mu, sigma = rng.uniform(0.5, 1.2), rng.uniform(0.02, 0.3)
        scores = truncnorm.sample(mu, sigma, n, rng=rng)
        correct = rng.random(n) < 1 / (1 + np.exp(-(1 + 10 * (scores - 0.8))))
        answers = []
        for c in correct:
            if rng.random() < none_rate:
                answers.append(None)
            else:
                answers.append("42" if c else str(rng.choice(["7", "8", "9"])))
        correct = [bool(c and a is not None) for c, a in zip(correct, answers)]
        out.append(SimpleNamespace(
            id=f"toy/{i}", question=f"question {i}", answer="42",
            samples=[SimpleNamespace(score=float(s), answer=a, tokens=int(rng.integers(50, 500)), correct=c)
                     for s, a, c in zip(scores, answers, correct)],
        ))
    return out


@pytest.fixture
def pool():
    return toy_pool()


@pytest.fixture(scope="module")
def upstream():
    """A fake OpenAI-compatible upstream (``live_fakes``, seed 3), one per test module that asks for it."""
    from live_fakes import FakeConfig, FakeServer

    with FakeServer(FakeConfig(seed=3)) as server:
        yield server


def shared_data(*parts: str) -> Path:
    """Path inside ../shared/data; where a clone has none, :func:`need` skips the test (fails it under CI)."""
    __tracebackhide__ = True
    path = SHARED.joinpath(*parts)
    need(path.exists(), f"the test needs the shared data set at {path} (not part of a user's clone)")
    return path


def wait_for(predicate, timeout: float = 10.0, what: str = "condition"):
    """Poll ``predicate`` until it returns something true, and return that (a deadline, not a delay).

    Tests wait on the condition they need, never a fixed time: the timeout is generous, only a
    bound for a condition that never comes.
    """
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout:g} s")
        time.sleep(0.005)
    return value


def run_cli(args, monkeypatch, capsys) -> tuple[int, str, str]:
    """Run the real entry point (``optscale.cli.main``) in-process: exit code, stdout, stderr."""
    from optscale.cli import main

    monkeypatch.setattr(sys, "argv", ["optscale", *map(str, args)])
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def lines(path: Path) -> list[dict]:
    """The JSON objects of a JSON Lines file."""
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def kill_cli_after(args, samples: Path, count: int) -> list[dict]:
    """Run the CLI in a subprocess, SIGKILL it once ``samples`` holds ``count`` lines; return those lines.

    The process must still be running when the lines appear, or the kill would test nothing.
    """
    proc = subprocess.Popen([sys.executable, "-c", "from optscale.cli import main; main()", *map(str, args)],
                            env=dict(os.environ, PYTHONUNBUFFERED="1"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_for(lambda: proc.poll() is not None or (samples.exists() and samples.read_text().count("\n") >= count),
             120, f"{count} lines in {samples}")
    assert proc.poll() is None, proc.stderr.read().decode()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return lines(samples)


def score_with(make_scorer, items):
    """Build a scorer inside a fresh event loop, check it, score ``items``, and always close it."""
    async def go():
        scorer = make_scorer()
        try:
            await scorer.check()
            return await scorer.score(items)
        finally:
            await scorer.aclose()

    return asyncio.run(go())


def drive(policy, problem, order):
    """Feed one problem's samples in the given order to a live episode; samples used and outcome."""
    from optscale.policies import Decision, Problem, Sample

    ep = policy.start(Problem(id=problem.id, question=problem.question))
    used = 0
    for j in order:
        s = problem.samples[j]
        used += 1
        assert ep.planned >= used or ep.planned == used - 1
        if ep.observe(Sample(s.score, s.answer, s.tokens)) is Decision.STOP:
            break
    return used, ep.result()


def check_live_equals_replay(policy, problems, orders: int = 3, seed: int = 7) -> None:
    """Live episodes, sample by sample, make the same decisions as the vectorised replay.

    Every policy must pass this on its settings: the same samples used, the same sample
    returned and (where it has one) the same N*, for every problem and sample order.
    """
    from optscale.replay import build_batch
    from optscale.replay.batch import order_indices

    batch = build_batch(problems, orders=orders, seed=seed)
    decisions = policy.replay(batch)
    idx = order_indices(batch.available, batch.shape[2], orders, seed)
    for p, problem in enumerate(problems):
        for r in range(orders):
            order = [int(j) for j in idx[p, r, : batch.available[p]]]
            used, outcome = drive(policy, problem, order)
            assert used == decisions.n_used[p, r], (problem.id, r)
            want = decisions.chosen[p, r]
            assert (outcome.chosen if outcome.chosen is not None else -1) == want, (problem.id, r)
            if "n_star" in decisions.estimates and outcome.estimates:
                assert outcome.estimates["n_star"] == decisions.estimates["n_star"][p, r]
