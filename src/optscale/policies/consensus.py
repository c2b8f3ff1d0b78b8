"""Consensus labels: a sample is correct when its answer equals the answer of full sampling.

The core of ``--labels consensus`` (issue 16), in the policies layer so that fits of policies
(``learned``) and offline replay (:mod:`optscale.replay.labels`, which re-exports it) share one
definition: the answer that the selection rule (``best``, ``majority`` or ``weighted``,
:mod:`optscale.policies.selection`) returns on the first ``n_max`` samples of a problem, in
the order they were drawn, and each sample compared with it (normalised answer codes). See
:mod:`optscale.replay.labels` for what such labels measure and what they cannot see.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..errors import InputError
from .base import ReplayBatch
from .episode import score_or_zero
from .selection import SELECTIONS, Selection

__all__ = ["LABELS", "check_labels", "consensus_labels", "full_answers", "relabel"]

#: Where a sample's "correct" comes from: gold answers (graded) or consensus with full sampling.
LABELS: tuple[str, ...] = ("gold", "consensus")

#: Problems named in the error about problems with fewer than n_max samples.
_SHOWN = 5


def check_labels(labels: str) -> str:
    """``gold`` or ``consensus``; anything else raises :class:`InputError` naming ``labels``."""
    if labels not in LABELS:
        raise InputError(f"unknown labels {labels!r}; use {' or '.join(LABELS)}", "labels")
    return labels


def _rule(select: Selection | str, has_scores: bool) -> str:
    try:
        rule = Selection(select).value
    except ValueError:
        raise InputError(f"unknown selection rule {select!r}; use {', '.join(s.value for s in Selection)}",
                         "select") from None
    if not has_scores and rule != "majority":
        raise InputError(f"consensus with select={rule} needs verifier scores, and the pool has none; "
                         "use select=majority", "select")
    return rule


def full_answers(answer: np.ndarray, score: np.ndarray, available: np.ndarray, select: Selection | str,
                 n_max: int, ids=None, source: str = "pool", has_scores: bool = True) -> np.ndarray:
    """Per problem, the answer code that ``select`` returns on its first ``n_max`` samples (-1: none).

    ``answer`` and ``score`` are ``(P, N)`` in the pool's own order (the order samples were
    drawn). A problem with fewer than ``n_max`` samples raises :class:`InputError` naming
    ``n_max``, the first few such problems (by ``ids``), their count and the fewest samples held;
    a pool where no sample has an answer raises one naming ``source``.
    """
    rule = _rule(select, has_scores)
    n_max = int(n_max)
    available = np.asarray(available)
    short = np.flatnonzero(available < n_max)
    if short.size:
        names = [repr(ids[i]) if ids is not None else f"#{i}" for i in short[:_SHOWN]]
        more = f" and {short.size - _SHOWN} more" if short.size > _SHOWN else ""
        raise InputError(f"consensus labels compare each sample with the answer of the problem's first {n_max} "
                         f"samples, but {short.size} problem(s) of {source} hold fewer (the fewest: "
                         f"{int(available[short].min())}): {', '.join(names)}{more}; lower n_max to at most "
                         f"{int(available.min())} or leave those problems out", "n_max")
    answer = np.asarray(answer)
    if not (answer >= 0).any():
        raise InputError("no sample has an answer, so there is no answer to agree with: consensus labels need "
                         "answers (the server extracts them with its answer extractor)", source)
    used = np.broadcast_to(np.arange(answer.shape[1]) < n_max, answer.shape)
    pos = SELECTIONS.get(rule)(score_or_zero(score), answer, used)
    return np.where(pos >= 0, answer[np.arange(answer.shape[0]), np.maximum(pos, 0)], -1)


def consensus_labels(data, select: Selection | str, n_max: int) -> np.ndarray:
    """Consensus labels of every sample of ``data``: its answer equals the full answer of its problem.

    ``data`` is a :class:`~optscale.replay.PoolArrays` (labels ``(P, N)``, pool order) or a
    :class:`~optscale.policies.base.ReplayBatch` (labels ``(P, R, N)``; its order 0 is the pool's
    own, as :func:`~optscale.replay.build_batch` lays it out). The full answer is what
    :func:`full_answers` returns on the first ``n_max`` samples of the pool's own order; samples
    without an answer, padding, and every sample of a problem whose full answer is none are False.
    """
    if isinstance(data, ReplayBatch):
        answer, score = data.answer[:, 0, :], data.score[:, 0, :]
    else:
        answer, score = data.answer, data.score
    full = full_answers(answer, score, data.available, select, n_max, data.ids, getattr(data, "source", "pool"),
                        getattr(data, "has_scores", True))
    full = full.reshape(full.shape + (1,) * (data.answer.ndim - 1))
    return (data.answer == full) & (full >= 0)


def relabel(data, labels: str, select: Selection | str, n_max: int):
    """``data`` (a :class:`~optscale.replay.PoolArrays` or a :class:`ReplayBatch`) with ``correct``
    from ``labels``: as it is (``gold``) or :func:`consensus_labels` of ``select`` on ``n_max`` samples
    (``consensus``; a batch's cached fits are dropped with its old labels)."""
    if check_labels(labels) == "gold":
        return data
    fresh = {"cache": {}} if isinstance(data, ReplayBatch) else {}
    return replace(data, correct=consensus_labels(data, select, n_max), **fresh)
