"""The upper concave envelope of cost-accuracy points: which of them no mixture of two others beats."""

from __future__ import annotations

import numpy as np

__all__ = ["TOL", "upper_envelope"]

#: Relative slack when comparing costs (sums of the same numbers in another order).
TOL = 1e-12


def upper_envelope(tokens: np.ndarray, accuracy: np.ndarray) -> np.ndarray:
    """Which points are vertices of the least concave non-decreasing majorant, row by row.

    ``tokens`` and ``accuracy`` are ``(B, N)`` (or ``(N,)``) with tokens non-decreasing along
    each row (fixed N costs more with N). Points after a row's first most accurate one lie
    under the flat part; of equal-cost points the (first) most accurate is kept. Vectorised over rows:
    every point on or under the chord of its surviving neighbours is dropped until none is,
    which never drops a vertex (a vertex lies strictly above every chord that spans it).
    """
    t, a = np.atleast_2d(np.asarray(tokens, dtype=float)), np.atleast_2d(np.asarray(accuracy, dtype=float))
    b, n = t.shape
    idx = np.broadcast_to(np.arange(n), (b, n))
    # of equal-cost points (contiguous: tokens are sorted) only the first most accurate survives
    new = np.ones((b, n), dtype=bool)
    new[:, 1:] = t[:, 1:] > t[:, :-1] * (1 + TOL)
    group = np.cumsum(new.ravel()) - 1
    starts = np.flatnonzero(new.ravel())
    top = a.ravel() == np.maximum.reduceat(a.ravel(), starts)[group]
    seen = np.cumsum(top)
    first_top = top & (seen - (seen - top)[starts][group] == 1)
    alive = first_top.reshape(b, n) & (idx <= np.argmax(a, axis=1)[:, None])
    rows = np.arange(b)[:, None]
    while True:
        left = np.maximum.accumulate(np.where(alive, idx, -1), axis=1)
        prev = np.concatenate([np.full((b, 1), -1), left[:, :-1]], axis=1)
        right = np.minimum.accumulate(np.where(alive, idx, n)[:, ::-1], axis=1)[:, ::-1]
        nxt = np.concatenate([right[:, 1:], np.full((b, 1), n)], axis=1)
        ps, ns = np.maximum(prev, 0), np.minimum(nxt, n - 1)
        tp, ap, tn, an = t[rows, ps], a[rows, ps], t[rows, ns], a[rows, ns]
        inner = alive & (prev >= 0) & (nxt < n)
        drop = inner & ((t - tp) * (an - ap) - (a - ap) * (tn - tp) >= 0)
        if not drop.any():
            return alive if np.ndim(tokens) > 1 else alive[0]
        alive &= ~drop
