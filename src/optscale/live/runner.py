"""One live run from a :class:`~optscale.live.config.RunConfig`: check, sample, write the pool.

The order matters for the run folder: everything that can be checked without a server
(dataset, policy, scorer settings, a resumed folder's identity, that ``out`` is a writable
folder) is checked first, then the servers, so a typo never leaves a folder that a corrected
command would refuse to resume. Every client opened is closed on every path.
"""

from __future__ import annotations

import time
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

from ..compose import build_policy
from ..errors import InputError
from ..io import ensure_out_dir
from .config import RunConfig, build_generator, build_run_scorer
from .datasets import LiveProblem, load_problems
from .runs import RunStore
from .sampler import Listener, ProblemResult, sample_problems
from .secrets import Redactor

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
    problems = load_problems(config.dataset)
    try:  # the application layer: a MAP policy given no priors gets the default predictor's
        policy = build_policy(config.policy, config.n_max, config.policy_config())
    except InputError as exc:
        raise exc.renamed({"settings": "policy_settings", "settings.": "policy_settings."}) from None
    identity = config.identity()
    store = RunStore(config.out, redact=Redactor(config.secrets()))
    done = store.compatible(identity, config.normalise_identity) \
        and {p.id for p in problems} <= store.finished_ids()
    ensure_out_dir(store.path, "out")
    async with AsyncExitStack() as clients:
        generator = build_generator(config)
        clients.push_async_callback(generator.aclose)
        scorer = build_run_scorer(config)
        clients.push_async_callback(scorer.aclose)
        if not done:  # a finished run needs no server: its pool and report are rebuilt from the log
            await generator.check(need_logprobs=scorer.needs_logprobs, why="scorer")
            await scorer.check()
        resumed = store.prepare(identity, config.runtime(), config.normalise_identity)
        store.open()
        try:
            results = await sample_problems(problems, generator, scorer, policy, template=config.template_obj(),
                                            settings=config.sampler, store=store, listener=listener)
        finally:
            await store.aclose()
    pool = store.write_pool(problems)
    return RunOutcome(problems, results, resumed, time.monotonic() - start, pool)
