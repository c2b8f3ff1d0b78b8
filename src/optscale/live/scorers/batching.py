"""Batches score requests from many concurrent samples for one scorer."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from .base import Score, Scorer, ScoreRequest, ScoringError

__all__ = ["BatchingScorer", "ScorerStats"]

log = logging.getLogger(__name__)


@dataclass
class ScorerStats:
    """How scoring went: batches sent, items scored, failed batches and items."""

    batches: int = 0
    scored: int = 0
    failed_batches: int = 0
    failed_items: int = 0


class BatchingScorer:
    """Collects requests from many concurrent samples into batches for the underlying scorer.

    Workers take whatever is queued (up to ``max_batch``) the moment they are free, so batches
    grow exactly when the scorer is the bottleneck and no request waits on a timer. A scorer
    that fails, or answers a batch with the wrong number of scores, fails every request of
    that batch (logged and counted in ``stats``): no request is left waiting.
    """

    def __init__(self, scorer: Scorer, max_batch: int = 16, workers: int = 4):
        self.scorer = scorer
        self.max_batch = max_batch
        self.workers = workers
        self.stats = ScorerStats()
        self._queue: asyncio.Queue[tuple[ScoreRequest, asyncio.Future[Score]]] | None = None
        self._tasks: list[asyncio.Task] = []

    @property
    def kind(self) -> str:
        return self.scorer.kind

    @property
    def needs_logprobs(self) -> bool:
        return self.scorer.needs_logprobs

    async def check(self) -> None:
        await self.scorer.check()

    def _start(self) -> asyncio.Queue:
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._tasks = [asyncio.create_task(self._work(self._queue)) for _ in range(self.workers)]
        return self._queue

    async def _work(self, queue: asyncio.Queue) -> None:
        while True:
            batch = [await queue.get()]
            while len(batch) < self.max_batch and not queue.empty():
                batch.append(queue.get_nowait())
            batch = [(item, future) for item, future in batch if not future.done()]
            if not batch:
                continue
            self.stats.batches += 1
            try:
                scores = await self.scorer.score([item for item, _ in batch])
                if not isinstance(scores, list) or len(scores) != len(batch):
                    got = len(scores) if isinstance(scores, list) else type(scores).__name__
                    raise ScoringError(f"the {self.scorer.kind} scorer returned {got} scores for "
                                       f"{len(batch)} responses")
            except Exception as exc:  # delivered to every waiting sample, which decides what it means
                self.stats.failed_batches += 1
                self.stats.failed_items += len(batch)
                log.warning("the %s scorer failed on a batch of %d: %s", self.scorer.kind, len(batch), exc)
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self.stats.scored += len(batch)
            for (_, future), score in zip(batch, scores, strict=True):
                if not future.done():
                    future.set_result(score)

    async def score(self, items: Sequence[ScoreRequest]) -> list[Score]:
        queue = self._start()
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in items]
        for item, future in zip(items, futures, strict=True):
            queue.put_nowait((item, future))
        return list(await asyncio.gather(*futures))

    async def aclose(self) -> None:
        """Stop the workers (the underlying scorer is closed by whoever opened it)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks, self._queue = [], None
