"""One live run from a :class:`~optscale.live.config.RunConfig`: check, sample, write the pool.

The order matters for the run folder: everything that can be checked without writing
(dataset, policy, scorer settings, a resumed folder's identity, the servers) is checked
first, so a typo never leaves a folder that a corrected command would refuse to resume.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from ..policies import make_policy
from .config import RunConfig, build_generator, build_scorer
from .datasets import LiveProblem, load_problems
from .runs import RunStore
from .sampler import Listener, ProblemResult, sample_problems

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
    """Run (or resume) ``config`` in its folder ``config.out``."""
    start = time.monotonic()
    problems = load_problems(config.dataset_spec())
    policy = make_policy(config.policy, config.n_max, **config.policy_settings)
    template = config.template_obj()
    identity = config.identity()
    store = RunStore(config.out)
    done = store.compatible(identity) and {p.id for p in problems} <= store.finished_ids()
    generator = build_generator(config)
    scorer = build_scorer(config)
    try:
        if not done:  # a finished run needs no server: its pool and report are rebuilt from the log
            await generator.check(need_logprobs=scorer.needs_logprobs, why=f"--scorer {config.scorer}")
            await scorer.check()
        resumed = store.prepare(identity, config.runtime())
        store.open()
        try:
            results = await sample_problems(problems, generator, scorer, policy, template=template,
                                            settings=config.sampler(), store=store, listener=listener)
        finally:
            await store.aclose()
    finally:
        await generator.aclose()
        await scorer.aclose()
    pool = store.write_pool(problems, results)
    return RunOutcome(problems, results, resumed, time.monotonic() - start, pool)
