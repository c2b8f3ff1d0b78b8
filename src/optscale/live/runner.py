"""One live run from a :class:`~optscale.live.config.RunConfig`: check, sample, write the pool.

The order matters for the run folder: everything that can be checked without a server
(dataset, policy, scorer settings, a resumed folder's identity, that ``out`` is a writable
folder) is checked first, then the servers, so a typo never leaves a folder that a corrected
command would refuse to resume: a folder this command created is removed again when it fails
before writing the run's configuration. Every client opened is closed on every path.

``config.engine`` chooses where the problems are sampled: here (``local``) or on Ray actors
(``ray``, :mod:`.ray_engine`), which check the servers from where they run; either way this
process alone writes the run folder. A run whose problems are all finished needs neither.
"""

from __future__ import annotations

import time
from contextlib import AsyncExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from ..compose import build_policy
from ..errors import InputError
from ..io import ensure_out_dir
from .config import RunConfig, build_generator, build_run_scorer
from .datasets import LiveProblem, load_problems
from .runs import RunStore, check_storable
from .sampler import Listener, ProblemResult, sample_problems
from .secrets import Redactor
from .types import RequestRejected

__all__ = ["RunOutcome", "run_live"]


@dataclass
class RunOutcome:
    """What a session did: per-problem results (in dataset order) and where the files are."""

    problems: list[LiveProblem]
    results: list[ProblemResult]
    resumed: bool
    wall_s: float
    pool: Path | None

    @property
    def unfinished(self) -> list[ProblemResult]:
        return [r for r in self.results if r.error]


async def run_live(config: RunConfig, listener: Listener | None = None) -> RunOutcome:
    """Run (or resume) ``config`` in its folder ``config.out``.

    A server that refuses a request for good in the middle of the run (a revoked key) raises
    :class:`~optscale.errors.InputError` naming the setting to fix, like the checks do.
    """
    start = time.monotonic()
    problems = load_problems(config.dataset)
    try:  # the application layer: a MAP policy given no priors gets the default predictor's
        policy = build_policy(config.policy, config.n_max, config.policy_config())
    except InputError as exc:
        raise exc.renamed({"settings": "policy_settings", "settings.": "policy_settings."}) from None
    identity, runtime = config.identity(), config.runtime()
    check_storable({"identity": identity, "runtime": runtime})
    store = RunStore(config.out, redact=Redactor(config.secrets()))
    done = store.compatible(identity, config.normalise_identity) \
        and {p.id for p in problems} <= store.finished_ids()
    created = _missing(store.path)
    ensure_out_dir(store.path, "out")
    prepared = False
    try:
        async with AsyncExitStack() as clients:
            if config.engine == "ray" and not done:  # the actors build the clients and check the servers
                from .ray_engine import ray_engine

                engine = await clients.enter_async_context(ray_engine(config))
                sample = partial(engine.sample_problems, problems, store, listener)
            else:
                generator = build_generator(config)
                clients.push_async_callback(generator.aclose)
                scorer = build_run_scorer(config)
                clients.push_async_callback(scorer.aclose)
                if not done:  # a finished run needs no server: its pool and report are rebuilt from the log
                    await generator.check(need_logprobs=scorer.needs_logprobs, why="scorer")
                    await scorer.check()
                sample = partial(sample_problems, problems, generator, scorer, policy,
                                 template=config.template_obj(), settings=config.sampler, store=store,
                                 listener=listener)
            resumed = store.prepare(identity, runtime, config.normalise_identity)
            prepared = True
            store.open()
            try:
                results = await sample()
            except RequestRejected as exc:
                raise InputError(exc.detail, exc.where) from None
            finally:
                await store.aclose()
    finally:
        if not prepared:  # nothing was written: leave no folder the failed command created
            for folder in created:
                try:
                    folder.rmdir()
                except OSError:
                    break
    pool = store.write_pool(problems)
    return RunOutcome(problems, results, resumed, time.monotonic() - start, pool)


def _missing(path: Path) -> list[Path]:
    """``path`` and its ancestors that do not exist yet, deepest first (what creating it adds)."""
    missing = []
    for folder in (path, *path.parents):
        if folder.exists():
            break
        missing.append(folder)
    return missing
