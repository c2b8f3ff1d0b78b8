"""Which of the drawn samples a policy returns: best score, majority vote, or score-weighted vote.

One vectorised implementation serves both live episodes (a batch of one) and offline replay,
so the two can never disagree. "No answer" (code ``-1``) never receives a vote; a vote over
samples that all lack an answer returns nothing (``-1``).
"""

from __future__ import annotations

import enum
from collections.abc import Callable

import numpy as np

from ..registry import Registry

__all__ = ["SELECTIONS", "Selection", "select"]

#: Rules by name: ``rule(score, answer, used) -> position`` over rows of ``(B, N)`` arrays,
#: ``used`` marking each row's first ``n_used`` samples.
SELECTIONS: Registry[Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]] = Registry("selection rule")


@SELECTIONS.register("best")
def _best(score: np.ndarray, answer: np.ndarray, used: np.ndarray) -> np.ndarray:
    """Highest verifier score (Best-of-N); ties go to the earliest sample."""
    out = np.argmax(np.where(used, score, -np.inf), axis=1)
    return np.where(used.any(axis=1), out, -1)


@SELECTIONS.register("majority")
def _majority(score: np.ndarray, answer: np.ndarray, used: np.ndarray) -> np.ndarray:
    """Most frequent answer; ties go to the answer seen first."""
    return _vote(score, answer, used, np.ones_like(score))


@SELECTIONS.register("weighted")
def _weighted(score: np.ndarray, answer: np.ndarray, used: np.ndarray) -> np.ndarray:
    """Answer with the largest summed score; ties go to the answer seen first."""
    return _vote(score, answer, used, score)


#: The rules' names as the type of a policy's ``select`` setting (``Selection.BEST`` ...).
Selection = enum.Enum("Selection", [(name.upper(), name) for name in SELECTIONS], type=str, module=__name__)


def select(rule: Selection | str, score: np.ndarray, answer: np.ndarray, n_used: np.ndarray) -> np.ndarray:
    """Position of the returned sample among the first ``n_used[b]`` of each row ``b``.

    ``score`` and ``answer`` have shape ``(B, N)``; ``answer`` holds non-negative integer codes
    (equal code, equal answer) or ``-1``. For votes the returned position is the
    highest-scoring sample of the winning answer (earliest on ties).
    """
    rule = SELECTIONS.get(Selection(rule).value, "select")
    score = np.asarray(score, dtype=float)
    used = np.arange(score.shape[1])[None, :] < np.asarray(n_used)[:, None]
    return rule(score, np.asarray(answer), used)


def _vote(score: np.ndarray, answer: np.ndarray, used: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The highest-scoring sample of the answer with the largest total weight ("no answer" never votes)."""
    b, n = score.shape
    pos = np.arange(n)
    valid = used & (answer >= 0)
    k = int(answer.max()) + 1 if answer.size else 0
    if k == 0:
        return np.full(b, -1)
    rows = np.broadcast_to(np.arange(b)[:, None], (b, n))[valid]
    codes = answer[valid]
    tally = np.zeros((b, k))
    np.add.at(tally, (rows, codes), weights[valid])
    first = np.full((b, k), n)
    np.minimum.at(first, (rows, codes), np.broadcast_to(pos, (b, n))[valid])
    # Highest tally wins; among equal tallies the answer seen first.
    present = first < n
    best_tally = np.where(present, tally, -np.inf).max(axis=1, keepdims=True)
    winner_first = np.where(present & (tally >= best_tally), first, n).min(axis=1)
    has_vote = winner_first < n
    winner = answer[np.arange(b), np.minimum(winner_first, n - 1)]
    in_winner = valid & (answer == winner[:, None])
    out = np.argmax(np.where(in_winner, score, -np.inf), axis=1)
    return np.where(has_vote, out, -1)
