"""Turn a completion pool into the padded arrays that policies replay, in R seeded orders."""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from ..checks import check_int, check_seed
from ..errors import InputError
from ..policies.base import ReplayBatch

__all__ = ["MAX_ORDERS", "build_batch", "check_orders", "check_seed", "order_indices", "problem_meta", "subset"]

#: Most sample orders per problem: each order is a full copy of the pool's arrays.
MAX_ORDERS = 10_000


def check_orders(orders) -> int:
    """A number of sample orders: an integer from 1 to :data:`MAX_ORDERS`; anything else names ``orders``."""
    return check_int(orders, "orders", 1, MAX_ORDERS)


def build_batch(problems: Sequence, orders: int = 1, seed: int = 0, source: str = "pool") -> ReplayBatch:
    """Arrays of shape ``(P, R, N)`` for ``problems`` (pool records).

    Order 0 is the pool's own order; orders 1..R-1 are independent random permutations of
    each problem's samples drawn from ``seed``, so every policy sees identical sequences.
    Answers become per-problem integer codes of their normalised form (``-1`` for none).
    ``orders`` outside 1..:data:`MAX_ORDERS` or a negative ``seed`` raise :class:`InputError`.

    Samples without scores (answer-only pools) give NaN scores and ``has_scores`` False; a
    pool with scores on some samples only is refused, naming ``source`` and the sample. The
    problems' ``level`` and ``subject`` (where present) go to ``meta`` for prior sources.
    """
    from ..answers import normalize_answer

    orders, seed = check_orders(orders), check_seed(seed)
    if not problems:
        raise InputError("the pool has no problems", "pool")
    p = len(problems)
    available = np.array([len(pr.samples) for pr in problems], dtype=np.int64)
    n = int(available.max())
    first = problems[0].samples[0].score is not None
    score = np.zeros((p, n)) if first else np.full((p, n), np.nan)
    tokens = np.zeros((p, n))
    correct = np.zeros((p, n), dtype=bool)
    code = np.full((p, n), -1, dtype=np.int64)
    answer_text: list[tuple[str, ...]] = []
    for i, pr in enumerate(problems):
        keys: dict[str, int] = {}
        for j, s in enumerate(pr.samples):
            if (s.score is not None) != first:
                raise InputError(f"{'missing' if first else 'present'}, but the first sample of the pool "
                                 f"{'has one' if first else 'has none'}: a pool has a score on every sample or on none",
                                 f"{source} problem {pr.id!r} field samples[{j}].score")
            if first:
                score[i, j] = s.score
            tokens[i, j] = s.tokens
            correct[i, j] = bool(s.correct)
            key = normalize_answer(s.answer)
            if key is not None:
                code[i, j] = keys.setdefault(key, len(keys))
        answer_text.append(tuple(keys))
    perm = order_indices(available, n, orders, seed)
    take = lambda a: np.take_along_axis(a[:, None, :].repeat(orders, 1), perm, axis=2)  # noqa: E731
    return ReplayBatch(
        score=take(score), answer=take(code), tokens=take(tokens), correct=take(correct),
        available=available, ids=tuple(str(pr.id) for pr in problems),
        questions=tuple(getattr(pr, "question", None) for pr in problems), answer_text=tuple(answer_text),
        has_scores=first, source=source, meta=tuple(problem_meta(pr) for pr in problems),
    )


def problem_meta(problem) -> dict | None:
    """The metadata of a pool problem that prior sources use (:data:`optscale.priors.META_KEYS`), or None."""
    from ..priors import META_KEYS

    meta = {k: getattr(problem, k) for k in META_KEYS if getattr(problem, k, None) is not None}
    return meta or None


def order_indices(available: np.ndarray, n: int, orders: int, seed: int) -> np.ndarray:
    """Index arrays ``(P, R, N)``: identity first, then seeded shuffles that keep padding last."""
    p = available.size
    rng = np.random.default_rng(seed)
    keys = rng.random((p, orders, n))
    keys[:, 0, :] = np.arange(n)
    pad = np.arange(n)[None, None, :] >= available[:, None, None]
    keys = np.where(pad, np.inf, keys)
    return np.argsort(keys, axis=2, kind="stable")


def subset(batch: ReplayBatch, rows: Iterable[int]) -> ReplayBatch:
    """The same batch restricted to some problems (e.g. a calibration split)."""
    idx = np.asarray(list(rows), dtype=np.int64)
    return ReplayBatch(
        score=batch.score[idx], answer=batch.answer[idx], tokens=batch.tokens[idx], correct=batch.correct[idx],
        available=batch.available[idx], ids=tuple(batch.ids[i] for i in idx),
        questions=tuple(batch.questions[i] for i in idx),
        answer_text=tuple(batch.answer_text[i] for i in idx) if batch.answer_text else (),
        has_scores=batch.has_scores, source=batch.source,
        meta=tuple(batch.meta[i] for i in idx) if batch.meta else (),
    )
