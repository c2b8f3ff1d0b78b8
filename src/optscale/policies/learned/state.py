"""The state of a problem after each prefix of its samples, and the limits on a table's size."""

from __future__ import annotations

import numpy as np

from ..common import score_or_zero
from ..selection import Selection

#: Defaults of a fit with fixed features (``--features`` given), chosen on calibration data of
#: simulated pools (see benchmarks/policy_frontier.py).
DEFAULT_BINS = 8
DEFAULT_AGREE_CAP = 6
DEFAULT_SHRINK = 20.0
DEFAULT_LENGTH_BINS = 3
#: Cap on the margin feature (leader's count minus the runner-up's) when it is used.
DEFAULT_MARGIN_CAP = 4

# Largest (rows x width x answers) block the state features work on at once.
_BLOCK = 4_000_000

#: Most quantile bins of the best score so far.
MAX_BINS = 256
#: Largest cap on the count of samples sharing the returned answer (0: no agreement feature).
MAX_AGREE_CAP = 1024
#: Largest cap on the margin (0: no margin feature).
MAX_MARGIN_CAP = 64
#: Most quantile bins of the returned sample's tokens.
MAX_LENGTH_BINS = 64
#: Most cells ``n_max x bins x (agree_cap + 1) x (margin_cap + 1) x C x L`` a table may have (its stop
#: array, in bytes).
MAX_TABLE_CELLS = 2**24


def table_cells(n_max: int, bins: int, agree_cap: int, consensus: bool, length_bins: int, margin_cap: int = 0) -> int:
    """Cells of a table's stop array (Python integers: no overflow)."""
    return (int(n_max) * int(bins) * (int(agree_cap) + 1) * (int(margin_cap) + 1) * (2 if consensus else 1)
            * int(length_bins))


def _size_error(n_max: int, bins: int, agree_cap: int, consensus: bool, length_bins: int,
                margin_cap: int = 0) -> str | None:
    cells = table_cells(n_max, bins, agree_cap, consensus, length_bins, margin_cap)
    if cells <= MAX_TABLE_CELLS:
        return None
    c = 2 if consensus else 1
    return (f"n_max x bins x (agree_cap + 1) x (margin_cap + 1) x {c} x length_bins = {n_max} x {bins} x "
            f"{agree_cap + 1} x {margin_cap + 1} x {c} x {length_bins} = {cells} table cells, more than the limit "
            f"{MAX_TABLE_CELLS}; use fewer bins, a smaller agree_cap or margin_cap or fewer length bins")


def table_states(score: np.ndarray, code: np.ndarray, tokens: np.ndarray, width: int, edges: np.ndarray,
                 agree_cap: int, consensus: bool, length_edges: np.ndarray, rule: Selection | str,
                 margin_cap: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """State index and returned position after each prefix ``1..width`` of every row.

    ``score``, ``code`` and ``tokens`` are ``(B, N)`` with ``N >= width``. The state index is
    ``(((b * (agree_cap + 1) + k) * (margin_cap + 1) + m) * C + c) * L + l`` (``C`` = 2 with
    ``consensus``, else 1; ``L = len(length_edges) + 1``); the position is the sample
    ``select(rule)`` returns after that prefix (-1: none). One vectorised implementation serves
    the fit, the replay and the live episode (a batch of one row).
    """
    feats = prefix_features(score, code, tokens, width, rule)
    return combine(feats, edges, agree_cap, margin_cap, consensus, length_edges), feats.chosen


class Features:
    """The raw features after each prefix (``(B, width)`` arrays), before capping and combining."""

    __slots__ = ("best", "count", "margin", "agree", "length", "chosen")

    def __init__(self, rows: int, width: int):
        self.best = np.empty((rows, width), dtype=float)
        self.count = np.empty((rows, width), dtype=np.int32)
        self.margin = np.empty((rows, width), dtype=np.int32)
        self.agree = np.empty((rows, width), dtype=bool)
        self.length = np.empty((rows, width), dtype=float)
        self.chosen = np.empty((rows, width), dtype=np.int64)


def prefix_features(score: np.ndarray, code: np.ndarray, tokens: np.ndarray, width: int,
                    rule: Selection | str) -> Features:
    """Best score so far, leader's count, margin over the runner-up, consensus, returned length and position."""
    rule = Selection(rule)
    score = score_or_zero(score)
    rows = score.shape[0]
    out = Features(rows, width)
    kinds = max(int(code[:, :width].max(initial=-1)) + 1, 1)
    step = max(1, _BLOCK // (width * max(kinds, width)))
    for lo in range(0, rows, step):
        part = slice(lo, lo + step)
        values = _prefix(score[part, :width], code[part, :width], tokens[part, :width], kinds, rule)
        for name, value in zip(Features.__slots__, values):
            getattr(out, name)[part] = value
    return out


def combine(f: Features, edges: np.ndarray, agree_cap: int, margin_cap: int, consensus: bool,
            length_edges: np.ndarray) -> np.ndarray:
    """The state index of every prefix from its raw features (see :func:`table_states`)."""
    bins = np.searchsorted(edges, f.best, side="right") if len(edges) else np.zeros(f.best.shape, dtype=np.int64)
    state = bins * (agree_cap + 1) + np.minimum(f.count, agree_cap)
    state = state * (margin_cap + 1) + np.minimum(f.margin, margin_cap)
    if consensus:
        state = state * 2 + f.agree
    if len(length_edges):
        state = state * (len(length_edges) + 1) + np.searchsorted(length_edges, f.length, side="right")
    return state.astype(np.int32)


def _prefix(score, code, tokens, kinds, rule):
    b, w = score.shape
    pos = np.arange(w)
    rows = np.arange(b)[:, None]
    # Best-scored sample so far (earliest on ties), as Best-of-N selects it.
    run_max = np.maximum.accumulate(score, axis=1)
    prev = np.concatenate([np.full((b, 1), -np.inf), run_max[:, :-1]], axis=1)
    best = np.maximum.accumulate(np.where(score > prev, pos, 0), axis=1)
    best_code = code[rows, best]
    onehot = code[:, :, None] == np.arange(kinds)
    tally = np.cumsum(onehot, axis=1, dtype=np.int32)
    top = tally.max(axis=2)
    if rule is Selection.BEST:
        lead = best_code
        chosen = best
    else:
        # The vote's winner after each prefix: largest total weight, ties to the answer seen first.
        weight = tally if rule is Selection.MAJORITY else np.cumsum(np.where(onehot, score[:, :, None], 0.0), axis=1)
        present = tally > 0
        first = np.where(onehot.any(axis=1), onehot.argmax(axis=1), w)[:, None, :]
        wmax = np.where(present, weight, -np.inf).max(axis=2, keepdims=True)
        first_lead = np.where(present & (weight >= wmax), first, w).min(axis=2)
        lead = np.where(first_lead < w, code[rows, np.minimum(first_lead, w - 1)], -1)
        # Its highest-scoring sample so far (earliest on ties), as the vote returns it.
        mine = code[:, :, None] == np.maximum(lead, 0)[:, None, :]  # (b, sample, prefix)
        masked = np.where(mine & (pos[:, None] <= pos[None, :])[None], score[:, :, None], -np.inf)
        chosen = np.where(lead >= 0, masked.argmax(axis=1), -1)
    has = lead >= 0
    mine = np.arange(kinds)[None, None, :] == np.maximum(lead, 0)[:, :, None]
    count = np.where(has, np.take_along_axis(tally, np.maximum(lead, 0)[:, :, None], axis=2)[..., 0], 0)
    runner = np.where(mine & has[:, :, None], 0, tally).max(axis=2)
    margin = np.maximum(count - runner, 0)
    agree = has & (count == top) & (lead == best_code)
    length = np.where(chosen >= 0, tokens[rows, np.maximum(chosen, 0)], 0.0)
    return run_max, count, margin, agree, length, chosen
