"""A pool as compact arrays, read one line at a time, and replayed in chunks of problems.

A pool's JSON is mostly text (questions, responses) that replay never reads, and a replay
batch holds every sample once per order. Reading the pool into a list of validated records
and laying out all orders at once made a 50 MB pool of 9,500 problems x 64 samples peak at
about 1 GB. Here every line is still validated (:func:`optscale.pools.iter_pool`: the same
checks, errors and grading), but each problem is turned into a few numbers at once and its
record discarded; :class:`PoolArrays` keeps ``(P, N)`` arrays (float64 scores and tokens, so
threshold rules see exactly the scores a live episode sees, int32 answer codes, booleans), and
:class:`OrderedPool` lays out the ``R`` sample orders of a bounded chunk of problems at a time.
Policies decide each problem from its own samples only (live episodes see one problem), so
replaying chunk by chunk gives exactly what one batch of all problems gives; the orders are
the ones :func:`~optscale.replay.batch.build_batch` draws for the same seed.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError
from ..policies.base import ReplayBatch
from .batch import check_orders, check_seed

__all__ = ["CHUNK_CELLS", "OrderedPool", "PoolArrays", "arrays_from_problems", "as_source", "read_pool_arrays"]

#: Cells (problems x orders x positions) laid out at once: about 8 MB of batch arrays per chunk,
#: plus what a policy computes on them (more cells gain no speed).
CHUNK_CELLS = 1 << 18


@dataclass(frozen=True)
class PoolArrays:
    """Every sample of a pool in pool order, padded to ``(P, N)`` as :class:`ReplayBatch` pads."""

    score: np.ndarray  # float64; NaN throughout for an answer-only pool
    answer: np.ndarray  # int32 per-problem codes of normalised answers, -1 for none
    tokens: np.ndarray  # float64 (exact up to 2**53, the pool format's limit)
    correct: np.ndarray  # bool
    available: np.ndarray  # int64 samples per problem
    ids: tuple[str, ...]
    questions: tuple[str | None, ...]
    answer_text: tuple[tuple[str, ...], ...]
    meta: tuple[Mapping[str, Any] | None, ...]
    has_scores: bool = True
    source: str = "pool"

    @property
    def problems(self) -> int:
        return int(self.available.size)

    @property
    def width(self) -> int:
        return int(self.score.shape[1])

    def take(self, rows: Iterable[int]) -> PoolArrays:
        """The same pool restricted to some problems (e.g. a calibration split), in the given order."""
        idx = np.asarray(list(rows) if not isinstance(rows, np.ndarray) else rows, dtype=np.int64)
        pick = lambda seq: tuple(seq[i] for i in idx)  # noqa: E731
        return PoolArrays(self.score[idx], self.answer[idx], self.tokens[idx], self.correct[idx], self.available[idx],
                          pick(self.ids), pick(self.questions), pick(self.answer_text), pick(self.meta),
                          self.has_scores, self.source)

    def ordered(self, orders: int = 1, seed: int = 0, chunk_cells: int = CHUNK_CELLS) -> OrderedPool:
        return OrderedPool(self, check_orders(orders), check_seed(seed), chunk_cells)

    def batch(self, orders: int = 1, seed: int = 0) -> ReplayBatch:
        """Every problem in ``orders`` orders as one :class:`ReplayBatch`, the arrays
        :func:`~optscale.replay.build_batch` lays out for the same seed (for fits that need the whole pool)."""
        cells = self.problems * check_orders(orders) * self.width
        return next(self.ordered(orders, seed, chunk_cells=max(1, cells)).chunks())[1]


class _Builder:
    """Every sample's numbers appended to flat buffers; padded into arrays once the pool is read.

    Per sample that is 21 bytes (score, tokens, answer code, correctness), with no object per
    problem or sample: what a problem's record held (texts, step scores) is gone once it is added.
    """

    def __init__(self, source: str):
        self.source = source
        self.score, self.tokens = array("d"), array("d")
        self.answer, self.correct = array("i"), array("b")
        self.sizes = array("q")
        self.ids: list[str] = []
        self.questions: list[str | None] = []
        self.answer_text: list[tuple[str, ...]] = []
        self.meta: list[Mapping[str, Any] | None] = []
        self.has_scores: bool | None = None

    def add(self, problem) -> None:
        from ..answers import normalize_answer
        from .batch import problem_meta

        samples = problem.samples
        if self.has_scores is None:
            self.has_scores = samples[0].score is not None
        for j, s in enumerate(samples):
            if (s.score is not None) != self.has_scores:
                raise InputError(f"{'missing' if self.has_scores else 'present'}, but the first sample of the pool "
                                 f"{'has one' if self.has_scores else 'has none'}: a pool has a score on every sample "
                                 "or on none", f"{self.source} problem {problem.id!r} field samples[{j}].score")
        keys: dict[str, int] = {}
        seen: dict[str | None, int] = {}  # raw answer -> code: normalise each distinct text once
        for s in samples:
            code = seen.get(s.answer)
            if code is None:
                key = normalize_answer(s.answer)
                code = seen[s.answer] = -1 if key is None else keys.setdefault(key, len(keys))
            self.answer.append(code)
        self.score.extend(s.score if self.has_scores else math.nan for s in samples)
        self.tokens.extend(float(s.tokens) for s in samples)
        self.correct.extend(bool(s.correct) for s in samples)
        self.sizes.append(len(samples))
        self.ids.append(str(problem.id))
        self.questions.append(getattr(problem, "question", None))
        self.answer_text.append(tuple(keys))
        self.meta.append(problem_meta(problem))

    def build(self) -> PoolArrays:
        if not self.sizes:
            raise InputError("the pool has no problems", "pool")
        available = np.frombuffer(self.sizes, dtype=np.int64).copy()
        p, n = available.size, int(available.max())
        inside = np.arange(n)[None, :] < available[:, None]  # row-major order: the order samples were added

        def padded(buffer: array, dtype, fill) -> np.ndarray:
            out = np.full((p, n), fill, dtype=dtype)
            out[inside] = np.frombuffer(buffer, dtype=dtype)
            del buffer[:]  # each buffer is freed as soon as its array is laid out
            return out

        score = padded(self.score, np.float64, 0.0 if self.has_scores else np.nan)
        tokens = padded(self.tokens, np.float64, 0.0)
        answer = padded(self.answer, np.int32, -1)
        correct = padded(self.correct, np.int8, 0).view(bool)
        return PoolArrays(score, answer, tokens, correct, available, tuple(self.ids), tuple(self.questions),
                          tuple(self.answer_text), tuple(self.meta), bool(self.has_scores), self.source)


def arrays_from_problems(problems: Iterable, source: str = "pool") -> PoolArrays:
    """:class:`PoolArrays` of pool records (validated :class:`~optscale.pools.PoolProblem` or alike)."""
    builder = _Builder(source)
    for problem in problems:
        builder.add(problem)
    return builder.build()


def read_pool_arrays(path, grade_missing: bool = True, require_gold: bool = True) -> PoolArrays:
    """Read and validate the pool at ``path`` (a file or a traffic folder) line by line
    (:func:`optscale.pools.iter_pool`) into :class:`PoolArrays`; no record outlives its line.
    Errors are those of ``iter_pool``; without ``require_gold`` a pool without gold answers is
    read (ungraded samples count as not correct until :func:`~optscale.replay.relabel`)."""
    import os

    from ..pools import iter_pool

    problems = iter_pool(path, grade_missing=grade_missing, require_gold=require_gold)
    return arrays_from_problems(problems, source=os.fspath(path))


@dataclass(frozen=True)
class OrderedPool:
    """A pool replayed in ``orders`` sample orders, laid out ``chunk_cells`` at a time.

    Order 0 is the pool's own; the others are the seeded shuffles of
    :func:`~optscale.replay.batch.order_indices`, drawn from one generator chunk after chunk so
    that they are the same numbers as for one batch of the whole pool.
    """

    arrays: PoolArrays
    orders: int = 1
    seed: int = 0
    chunk_cells: int = CHUNK_CELLS

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.arrays.problems, self.orders, self.arrays.width

    @property
    def has_scores(self) -> bool:
        return self.arrays.has_scores

    @property
    def chunk_problems(self) -> int:
        p, r, n = self.shape
        return max(1, self.chunk_cells // max(1, r * n))

    @property
    def n_chunks(self) -> int:
        return -(-self.shape[0] // self.chunk_problems)

    def chunks(self) -> Iterator[tuple[slice, ReplayBatch]]:
        """``(problem rows, batch)`` for consecutive chunks of problems, in pool order."""
        p, r, n = self.shape
        size = self.chunk_problems
        rng = np.random.default_rng(self.seed)
        a = self.arrays
        for start in range(0, p, size):
            rows = slice(start, min(p, start + size))
            avail = a.available[rows]
            keys = rng.random((avail.size, r, n))
            keys[:, 0, :] = np.arange(n)
            keys = np.where(np.arange(n)[None, None, :] >= avail[:, None, None], np.inf, keys)
            perm = np.argsort(keys, axis=2, kind="stable")
            del keys
            take = lambda x, dtype=None: np.take_along_axis(  # noqa: E731
                np.repeat(x[rows][:, None, :] if dtype is None else x[rows][:, None, :].astype(dtype), r, axis=1),
                perm, axis=2)
            yield rows, ReplayBatch(
                score=take(a.score), answer=take(a.answer, np.int64), tokens=take(a.tokens), correct=take(a.correct),
                available=avail, ids=a.ids[rows], questions=a.questions[rows], answer_text=a.answer_text[rows],
                has_scores=a.has_scores, source=a.source, meta=a.meta[rows],
            )


@dataclass(frozen=True)
class _WholeBatch:
    """An already laid-out :class:`ReplayBatch` seen as a source of one chunk."""

    batch: ReplayBatch

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.batch.shape

    @property
    def has_scores(self) -> bool:
        return getattr(self.batch, "has_scores", True)

    def chunks(self) -> Iterator[tuple[slice, ReplayBatch]]:
        yield slice(0, self.batch.shape[0]), self.batch


def as_source(data: ReplayBatch | OrderedPool | Sequence) -> OrderedPool | _WholeBatch:
    """What the replay engine iterates: an :class:`OrderedPool` as is, a :class:`ReplayBatch` as one chunk."""
    if isinstance(data, (OrderedPool, _WholeBatch)):
        return data
    if isinstance(data, ReplayBatch):
        return _WholeBatch(data)
    raise TypeError(f"expected a ReplayBatch or an OrderedPool, got {type(data).__name__}")
