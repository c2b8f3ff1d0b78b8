"""Which of the drawn samples a policy returns: best score, majority vote, or score-weighted vote.

One vectorised implementation serves both live episodes (a batch of one) and offline replay,
so the two can never disagree. "No answer" (code ``-1``) never receives a vote; a vote over
samples that all lack an answer returns nothing (``-1``).
"""

from __future__ import annotations

import enum

import numpy as np

__all__ = ["Selection", "select"]


class Selection(str, enum.Enum):
    BEST = "best"  #: highest verifier score (Best-of-N); ties go to the earliest sample
    MAJORITY = "majority"  #: most frequent answer; ties go to the answer seen first
    WEIGHTED = "weighted"  #: answer with the largest summed score; ties go to the answer seen first


def select(rule: Selection | str, score: np.ndarray, answer: np.ndarray, n_used: np.ndarray) -> np.ndarray:
    """Position of the returned sample among the first ``n_used[b]`` of each row ``b``.

    ``score`` and ``answer`` have shape ``(B, N)``; ``answer`` holds non-negative integer codes
    (equal code, equal answer) or ``-1``. For votes the returned position is the
    highest-scoring sample of the winning answer (earliest on ties).
    """
    rule = Selection(rule)
    score = np.asarray(score, dtype=float)
    answer = np.asarray(answer)
    b, n = score.shape
    pos = np.arange(n)
    used = pos[None, :] < np.asarray(n_used)[:, None]
    if rule is Selection.BEST:
        masked = np.where(used, score, -np.inf)
        out = np.argmax(masked, axis=1)
        return np.where(used.any(axis=1), out, -1)
    valid = used & (answer >= 0)
    k = int(answer.max()) + 1 if answer.size else 0
    if k == 0:
        return np.full(b, -1)
    rows = np.broadcast_to(np.arange(b)[:, None], (b, n))[valid]
    codes = answer[valid]
    weight = 1.0 if rule is Selection.MAJORITY else score[valid]
    tally = np.zeros((b, k))
    np.add.at(tally, (rows, codes), weight)
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
