"""Fitting a stopping table: calibration statistics, shrinkage, backward induction, the budget."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ...checks import check_int, check_number, is_number
from ...errors import InputError
from ...priors import problem_keys
from ...stats.hull import upper_envelope
from ..base import ReplayBatch
from ..common import N_MAX_LIMIT, score_or_zero
from ..consensus import relabel
from ..selection import Selection
from .state import (DEFAULT_AGREE_CAP, DEFAULT_BINS, DEFAULT_LENGTH_BINS, DEFAULT_SHRINK, MAX_AGREE_CAP, MAX_BINS,
                    MAX_LENGTH_BINS, MAX_MARGIN_CAP, Features, _size_error, combine, prefix_features)
from .table import StoppingTable, mix_fraction

#: Fewest calibration problems a table is fitted on.
MIN_PROBLEMS = 2
#: Problems named in an error about short problems (then a count).
_SHOWN = 5


# -- calibration statistics ------------------------------------------------------------------------
@dataclass
class _Stats:
    """Sufficient statistics of a set of calibration rows for the recursion (additive over rows)."""

    q_sum: np.ndarray  #: (n_max, S) correct returns in each state after each n
    q_cnt: np.ndarray  #: (n_max, S) rows in each state after each n
    c_sum: np.ndarray  #: (n_max - 1, S) cost of the next sample, by state
    pairs: list[tuple[np.ndarray, np.ndarray, np.ndarray]]  #: per step j: (s_j, s_j+1, count) of transitions

    @classmethod
    def of(cls, states: np.ndarray, correct: np.ndarray, cost: np.ndarray, size: int) -> _Stats:
        width = states.shape[1]
        q_sum = np.stack([np.bincount(states[:, j], correct[:, j], minlength=size) for j in range(width)])
        q_cnt = np.stack([np.bincount(states[:, j], minlength=size) for j in range(width)]).astype(float)
        c_sum = np.stack([np.bincount(states[:, j], cost[:, j + 1], minlength=size) for j in range(width - 1)]
                         ) if width > 1 else np.zeros((0, size))
        pairs = []
        for j in range(width - 1):
            code, count = np.unique(states[:, j].astype(np.int64) * size + states[:, j + 1], return_counts=True)
            pairs.append((code // size, code % size, count.astype(float)))
        return cls(q_sum, q_cnt, c_sum, pairs)

    @staticmethod
    def total(parts: list[_Stats]) -> _Stats:
        return _Stats(sum(p.q_sum for p in parts), sum(p.q_cnt for p in parts), sum(p.c_sum for p in parts),
                      [tuple(np.concatenate(x) for x in zip(*step)) for step in zip(*(p.pairs for p in parts))])


def _shrunk(total: np.ndarray, count: np.ndarray, shape: tuple[int, ...], shrink: float) -> np.ndarray:
    """Per-state means ``total / count`` (last axis: the state index), each level (one more feature of
    ``shape``) shrunk toward the level above it, from ``n`` alone down to the full state."""
    lead = total.shape[:-1]
    all_n = count.sum(axis=-1, keepdims=True)
    sums = total.sum(axis=-1, keepdims=True)
    est = np.divide(sums, all_n, out=np.zeros(np.broadcast_shapes(sums.shape, all_n.shape)), where=all_n > 0)
    prefix = 1
    for size in shape:
        if size == 1:
            continue
        prefix *= size
        t = total.reshape(*lead, prefix, -1).sum(axis=-1)
        c = count.reshape(*count.shape[:-1], prefix, -1).sum(axis=-1)
        parent = np.repeat(est, size, axis=-1)
        est = np.where(c > 0, (t + shrink * parent) / np.maximum(c + shrink, 1e-300), parent)
    return np.repeat(est, total.shape[-1] // est.shape[-1], axis=-1)


@dataclass
class _Calibration:
    """What the fit needs of a calibration batch, computed once: states, outcomes, costs."""

    states: np.ndarray  #: (rows, n_max) state index after each prefix
    correct: np.ndarray  #: (rows, n_max) whether the returned sample is correct after each prefix
    cost: np.ndarray  #: (rows, n_max) cost of each sample
    available: np.ndarray  #: (rows,) samples of each row (n_max: every calibration problem has them)
    shape: tuple[int, ...]  #: size of each feature: (bins, agree_cap + 1, margin_cap + 1, consensus columns, lengths)
    _stats: _Stats | None = field(default=None, repr=False)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def stats(self) -> _Stats:
        if self._stats is None:
            self._stats = _Stats.of(self.states, self.correct, self.cost, self.size)
        return self._stats

    def replay(self, stop: np.ndarray, mix_stop: np.ndarray | None = None, mixed: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Samples used, correctness and cost per row under a stop table ``(n_max, states)`` (rows
        ``mixed`` follow ``mix_stop``)."""
        return _first_stop(self.states, self.correct, self.cost, self.available, stop, mix_stop, mixed)


def _first_stop(states, correct, cost, available, stop, mix_stop=None, mixed=None):
    rows, width = states.shape
    cols = np.arange(width)[None, :]
    hit = stop[cols, states]
    if mix_stop is not None and mixed is not None:
        hit = np.where(mixed[:, None], mix_stop[cols, states], hit)
    hit[:, -1] = True
    hit |= cols + 1 >= available[:, None]
    n = hit.argmax(axis=1) + 1
    spent = np.cumsum(cost, axis=1)[np.arange(rows), n - 1]
    return n, correct[np.arange(rows), n - 1], spent


def _q_values(cal: _Calibration, shrink: float) -> np.ndarray:
    """P(correct | state) after each n, shrunk toward coarser states: ``(n_max, states)``."""
    return _shrunk(cal.stats.q_sum, cal.stats.q_cnt, cal.shape, shrink)


def _induction(cal: _Calibration | _Stats, q: np.ndarray, lam: float, shrink: float,
               shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Backward induction: the stop decision ``(n_max, states)`` for cost ``lam`` per unit."""
    stats = cal.stats if isinstance(cal, _Calibration) else cal
    shape = cal.shape if isinstance(cal, _Calibration) else shape
    width, size = q.shape
    stop = np.ones_like(q, dtype=bool)
    value = q[width - 1]
    for j in range(width - 2, -1, -1):
        src, dst, count = stats.pairs[j]
        after = np.bincount(src, count * value[dst], minlength=size) - lam * stats.c_sum[j]
        cont = _shrunk(after, stats.q_cnt[j], shape, shrink)
        stop[j] = q[j] >= cont
        value = np.maximum(q[j], cont)
    return stop


# -- checks and preparation -------------------------------------------------------------------------
def check_pool(batch: ReplayBatch, n_max: int) -> None:
    """Refuse a calibration pool a table cannot be fitted on: fewer than :data:`MIN_PROBLEMS`
    problems, or problems with fewer than ``n_max`` samples (named, with the fewest)."""
    p = batch.shape[0]
    if p < MIN_PROBLEMS:
        raise InputError(f"has {p} problem(s); a stopping table is fitted on at least {MIN_PROBLEMS} calibration "
                         "problems (better hundreds): with one, every state is that problem and the in-sample "
                         "accuracy says nothing", batch.source)
    short = np.flatnonzero(batch.available < n_max)
    if short.size:
        names = ", ".join(repr(batch.ids[i]) for i in short[:_SHOWN])
        more = f" and {short.size - _SHOWN} more" if short.size > _SHOWN else ""
        raise InputError(f"every calibration problem needs at least n_max = {n_max} samples (the table decides after "
                         f"each of them); {short.size} of {p} problems of {batch.source} have fewer (fewest: "
                         f"{int(batch.available.min())}): {names}{more}; fit a smaller n_max or leave those "
                         "problems out", "n_max")


@dataclass
class _Prepared:
    """A batch's features for one selection rule (computed once; every design combines them)."""

    rule: Selection
    feats: Features
    correct: np.ndarray  #: (rows, n_max) whether the sample the rule returns after each n is correct
    cost: np.ndarray  #: (rows, n_max)
    length_edges: np.ndarray
    cost_name: str
    has_scores: bool

    def edges(self, bins: int) -> np.ndarray:
        """Quantile edges of the best score so far for ``bins`` bins (none without scores)."""
        return _quantile_edges(self.feats.best, bins, 6) if bins > 1 and self.has_scores else np.zeros(0)

    def calibration(self, bins: int, agree_cap: int, margin_cap: int, consensus: bool, length: bool
                    ) -> tuple[_Calibration, np.ndarray, np.ndarray]:
        """Calibration rows of one state design, with its score and length edges."""
        edges = self.edges(bins)
        consensus = consensus and self.has_scores
        length_edges = self.length_edges if length else np.zeros(0)
        states = combine(self.feats, edges, agree_cap, margin_cap, consensus, length_edges)
        shape = (len(edges) + 1, agree_cap + 1, margin_cap + 1, 2 if consensus else 1, len(length_edges) + 1)
        return _Calibration(states, self.correct, self.cost, np.full(states.shape[0], states.shape[1]), shape), \
            edges, length_edges


def _features(batch: ReplayBatch, n_max: int, rule: Selection, length_bins: int = DEFAULT_LENGTH_BINS) -> _Prepared:
    score = score_or_zero(batch.flat("score"))
    code, correct, tokens = batch.flat("answer"), batch.flat("correct"), batch.flat("tokens")
    if rule is not Selection.BEST and not (code[:, :n_max] >= 0).any():
        raise InputError(f"no sample of {batch.source} has an extracted answer, so select={rule.value} (a vote over "
                         "answers) never returns one and there is nothing to fit; give a pool with answers",
                         f"{batch.source} field samples[].answer")
    cost_name = "tokens" if tokens[:, :n_max].sum() > 0 else "samples"
    cost = tokens[:, :n_max].astype(float) if cost_name == "tokens" else np.ones((code.shape[0], n_max))
    feats = prefix_features(score, code, tokens, n_max, rule)
    length_edges = np.zeros(0)
    if length_bins > 1 and cost_name == "tokens":
        length_edges = _quantile_edges(feats.length[feats.chosen >= 0], length_bins, 3)
    right = np.take_along_axis(correct[:, :n_max], np.maximum(feats.chosen, 0), axis=1) & (feats.chosen >= 0)
    return _Prepared(rule, feats, right, cost, length_edges, cost_name, bool(batch.has_scores))


def _quantile_edges(values: np.ndarray, bins: int, digits: int) -> np.ndarray:
    if not values.size:
        return np.zeros(0)
    edges = np.unique(np.round(np.quantile(values, np.arange(1, bins) / bins), digits))
    return edges[edges < values.max()]


def _prepare(batch: ReplayBatch, n_max: int, rule: Selection, bins: int, agree_cap: int, consensus: bool,
             length_bins: int, margin_cap: int = 0) -> tuple[_Calibration, np.ndarray, np.ndarray, str]:
    """The calibration rows of a batch for one state design: (calibration, edges, length edges, cost)."""
    prep = _features(batch, n_max, rule, length_bins)
    cal, edges, length_edges = prep.calibration(bins, agree_cap, margin_cap, consensus, True)
    return cal, edges, length_edges, prep.cost_name


# -- the fit ------------------------------------------------------------------------------------------
def fit_table(
    batch: ReplayBatch,
    n_max: int,
    select: Selection | str = Selection.BEST,
    lam: float | None = None,
    budget: float | None = None,
    bins: int = DEFAULT_BINS,
    agree_cap: int = DEFAULT_AGREE_CAP,
    consensus: bool = True,
    length_bins: int = DEFAULT_LENGTH_BINS,
    shrink: float = DEFAULT_SHRINK,
    source: dict | None = None,
    strict: bool = True,
    margin_cap: int = 0,
    features: tuple[str, ...] | None = None,
    labels: str = "gold",
) -> StoppingTable:
    """Fit a stopping table on a calibration batch (every problem, every order of it).

    Give exactly one of ``lam`` (cost per token, >= 0) or ``budget`` (a share of
    Best-of-``n_max``'s mean tokens in (0, 1]: the calibration mean tokens land on that share,
    at most and within 2% where the pool allows, by mixing the two neighbouring lambdas per problem,
    see :class:`StoppingTable`). Every calibration problem needs ``n_max`` samples, and there are
    at least :data:`MIN_PROBLEMS`. ``source`` (``pool`` name, ``sha256``) goes into the table's
    ``calibration`` section; the table records ``batch``'s problems and refuses to be applied to
    them unless ``strict`` is False (for a benchmark choosing among tables on their own calibration
    data). ``features`` only names the design in the file. ``labels`` "consensus" fits on
    consensus labels (no gold: agreement with the answer ``select`` returns on all ``n_max``
    samples, :func:`~optscale.policies.consensus.relabel`); the table records them
    (``fitted.labels``). Errors name the argument (``n_max``,
    ``select``, ``lam``, ``budget``, ``bins``, ``agree_cap``, ``margin_cap``, ``length_bins``,
    ``shrink``, ``source``); the limits are those of :mod:`.state`.
    """
    n_max, bins = check_int(n_max, "n_max", 1, N_MAX_LIMIT), check_int(bins, "bins", 1, MAX_BINS)
    agree_cap = check_int(agree_cap, "agree_cap", 0, MAX_AGREE_CAP)
    margin_cap = check_int(margin_cap, "margin_cap", 0, MAX_MARGIN_CAP)
    rule = _rule(select)
    _check_cost(lam, budget)
    if not (isinstance(shrink, (int, float)) and math.isfinite(shrink) and shrink >= 0):
        raise InputError(f"must be a number >= 0, got {shrink!r}", "shrink")
    if not batch.has_scores and rule is not Selection.MAJORITY:
        raise InputError(f"select={rule.value} needs sample scores and {batch.source} has none; use "
                         "select=majority", "select")
    if source is not None and (not isinstance(source, dict) or set(source) - {"pool", "sha256"}):
        raise InputError("must be a dict with keys pool and sha256 (the calibration pool's name and digest)", "source")
    length_bins = check_int(length_bins, "length_bins", 1, MAX_LENGTH_BINS)
    too_big = _size_error(n_max, bins, agree_cap, bool(consensus), length_bins, margin_cap)
    if too_big:
        raise InputError(too_big, "agree_cap" if agree_cap > DEFAULT_AGREE_CAP else "bins" if bins > DEFAULT_BINS
                         else "length_bins" if length_bins > DEFAULT_LENGTH_BINS else "margin_cap" if margin_cap
                         else "n_max")
    check_pool(batch, n_max)
    batch = relabel(batch, labels, rule, n_max)
    cal, edges, length_edges, cost_name = _prepare(batch, n_max, rule, bins, agree_cap, bool(consensus), length_bins,
                                                   margin_cap)
    return _finish(batch, cal, rule, edges, length_edges, cost_name, n_max, lam, budget, shrink, source, strict,
                   features, labels)


def _rule(select) -> Selection:
    try:
        return Selection(getattr(select, "value", select))
    except ValueError:
        raise InputError(f"must be one of {', '.join(e.value for e in Selection)}, got {select!r}", "select") from None


def _check_cost(lam, budget) -> None:
    if (lam is None) == (budget is None):
        raise InputError("give exactly one of lam (cost per token) and budget (share of BoN's tokens)", "budget")
    if lam is not None:
        check_number(lam, "lam", low=0)
    if budget is not None and not (is_number(budget) and 0 < budget <= 1):
        raise InputError(f"must be a share of Best-of-N's tokens in (0, 1], got {budget!r}", "budget")


def _finish(batch, cal, rule, edges, length_edges, cost_name, n_max, lam, budget, shrink, source, strict,
            features, labels: str = "gold", *, fixed: bool = False) -> StoppingTable:
    """The table of a design (``fixed``: the fixed N of the budget, :func:`_fixed_budget`) with its records."""
    q = _q_values(cal, shrink)
    bon_cost = cal.cost.sum(axis=1).mean()
    mix_lam, mix_share, mix_stop, mixed = None, 0.0, None, None
    if budget is not None and fixed:
        lam, stop, mix_lam, mix_share, mix_stop, mixed = _fixed_budget(batch, cal, rule, budget * bon_cost)
    else:
        if budget is not None:
            lam, mix_lam, mix_share, mix_stop, mixed = _budget(batch, cal, q, shrink, budget * bon_cost, budget)
        stop = _induction(cal, q, float(lam), shrink)
    n, right, spent = cal.replay(stop, mix_stop, mixed)
    p, r, _ = batch.shape
    inside = np.arange(batch.shape[2])[None, :] < batch.available[:, None]
    calibration = {
        **(source or {}),
        "problems": p, "samples": int(batch.available.sum()), "orders": r,
        "mean_accuracy": float(batch.correct[:, 0][inside].mean()),
        "mean_tokens": float(batch.tokens[:, 0][inside].mean()),
        "fixed_n_max_accuracy": float(cal.correct[:, -1].mean()),
        f"fixed_n_max_{cost_name}": float(bon_cost),
    }
    fitted = {"accuracy": float(right.mean()), "mean_samples": float(n.mean()), f"mean_{cost_name}": float(spent.mean()),
              "share_of_bon": float(spent.mean() / bon_cost) if bon_cost > 0 else 1.0,
              "note": "in-sample, on the calibration pool itself" + (
                  "; consensus labels: accuracy is agreement with the answer of all n_max samples" * (
                      labels == "consensus")),
              "labels": labels}
    shape = (n_max, *cal.shape)
    return StoppingTable(n_max=n_max, select=rule.value, lam=float(lam), edges=edges, agree_cap=cal.shape[1] - 1,
                         consensus=cal.shape[3] == 2, length_edges=length_edges if cal.shape[4] > 1 else np.zeros(0),
                         shrink=float(shrink), stop=stop.reshape(shape), budget=budget, cost=cost_name,
                         calibration=calibration, fitted=fitted, fitted_on=problem_keys(batch.ids, batch.questions),
                         strict=bool(strict), margin_cap=cal.shape[2] - 1, mix_lam=mix_lam, mix_share=mix_share,
                         mix_stop=None if mix_stop is None else mix_stop.reshape(shape),
                         features=tuple(features) if features is not None else None)


def _budget(batch, cal, q, shrink, target, budget):
    """Lambda (and the mixture) whose calibration mean cost lands on ``target``: the least lambda that
    spends at most ``target`` (``hi``), and the share of problems (by key, :func:`mix_fraction`) that
    follow the table of the lambda just below it (``lo``, which spends more) so that the mean comes as
    close to ``target`` as the problems allow without passing it."""
    lo, hi = _bisect(cal, q, shrink, target, budget)
    if lo is None:
        return hi, None, 0.0, None, None
    stop_lo = _induction(cal, q, lo, shrink)
    share, mixed = _mix(batch, cal, _induction(cal, q, hi, shrink), stop_lo, target)
    if mixed is None:
        return hi, None, 0.0, None, None
    return hi, lo, share, stop_lo, mixed


def _mix(batch, cal, stop_hi, stop_lo, target) -> tuple[float, np.ndarray | None]:
    """The share of problems (by key, :func:`mix_fraction`) that follow ``stop_lo`` (which spends more)
    instead of ``stop_hi`` so that the calibration mean cost comes as close to ``target`` as the
    problems allow without passing it, and which rows follow it (None: none)."""
    p, r, _ = batch.shape
    spent_hi = cal.replay(stop_hi)[2].reshape(p, r).mean(axis=1)
    spent_lo = cal.replay(stop_lo)[2].reshape(p, r).mean(axis=1)
    u = mix_fraction(batch.ids, batch.questions)
    order = np.argsort(u, kind="stable")
    mean = spent_hi.mean() + np.concatenate([[0.0], np.cumsum((spent_lo - spent_hi)[order])]) / p
    k = int(np.flatnonzero(mean <= target * (1 + 1e-12)).max())
    if k == 0:
        return 0.0, None
    share = 1.0 if k == p else float(u[order[k]])
    return share, np.repeat(u < share, r)


def fixed_ns(rule: Selection, n_max: int) -> np.ndarray:
    """The N a fixed-N table stops at: every N, but for the majority vote only odd N (and ``n_max``):
    with ties going to the answer seen first, a vote over an even N is in expectation no more
    accurate than over one sample fewer, and costs more."""
    ns = np.arange(1, n_max + 1)
    return ns if rule is not Selection.MAJORITY else ns[(ns % 2 == 1) | (ns == n_max)]


def fixed_path(rule: Selection, cost: np.ndarray, accuracy: np.ndarray) -> np.ndarray:
    """The N a fixed-N table mixes along, from the calibration curve (``cost``, ``accuracy`` of N = 1..n_max):
    the N of :func:`fixed_ns` on the upper concave hull of that curve up to its (first) most accurate N,
    then every N of :func:`fixed_ns` after it (so that any budget can still be spent). Up to that N a
    mixture of two neighbours is this rule's calibrated envelope (what a fixed method of this rule
    tuned on the same problems earns, :meth:`optscale.replay.Baseline.calibrated`, which also mixes
    rules and may use an even N of a vote): an N where the curve dips is skipped. Past it the path
    follows the curve itself, where that envelope stays flat."""
    ns = fixed_ns(rule, len(cost))
    y = np.asarray(accuracy, dtype=float)[ns - 1]
    after = np.arange(len(ns)) > np.argmax(y)
    return ns[upper_envelope(np.asarray(cost, dtype=float)[ns - 1], y) | after]


def _fixed_budget(batch, cal, rule, target):
    """The fixed N of a budget: every problem stops at the largest N of :func:`fixed_path` whose
    calibration mean cost is at most ``target``, and a share of them (by key) at the next one, so
    that the mean lands on the target on the calibration curve's hull (where a fixed method chosen on
    the calibration problems would be). Returns (lambda, stop, mix lambda, share, mix stop, mixed
    rows); the lambdas are the slope between the two N's calibration points (informative)."""
    width, size = cal.states.shape[1], cal.size
    cost_all = np.cumsum(cal.cost, axis=1).mean(axis=0)
    ns = fixed_path(rule, cost_all, cal.correct.mean(axis=0))
    cost = cost_all[ns - 1]
    acc = cal.correct.mean(axis=0)[ns - 1]
    i = max(0, int(np.searchsorted(cost, target * (1 + 1e-12), side="right")) - 1)
    stop = np.arange(width)[:, None] >= np.full((1, size), ns[i] - 1)
    if i + 1 >= len(ns):
        return 0.0, stop, None, 0.0, None, None
    mix_stop = np.arange(width)[:, None] >= np.full((1, size), ns[i + 1] - 1)
    share, mixed = _mix(batch, cal, stop, mix_stop, target)
    slope = float((acc[i + 1] - acc[i]) / max(cost[i + 1] - cost[i], 1e-300))
    if mixed is None:
        return slope, stop, None, 0.0, None, None
    return slope, stop, slope, share, mix_stop, mixed


def _bisect(cal: _Calibration, q: np.ndarray, shrink: float, target: float, budget: float
            ) -> tuple[float | None, float]:
    """The least cost per unit (log-scale bisection) whose calibration mean cost is at most ``target``
    (``hi``) and one a hair below it that spends more (``lo``; None when nothing spends more). Where
    lambda 0 spends less than ``target`` the cost is negative: a reward per unit, so that the table
    spends the budget in the states where its estimates say continuing loses least."""
    def spent(lam: float) -> float:
        return float(cal.replay(_induction(cal, q, lam, shrink))[2].mean())

    unit = float(cal.cost[cal.cost > 0].min())
    sign = 1.0
    if spent(0.0) <= target:
        sign, far = -1.0, 1.0 / unit
        while spent(-far) <= target:
            if far > 1e6 / unit:
                return None, -far  # every state continues: Best-of-n_max fits the budget
            far *= 4.0
        if spent(-far * 1e-9) > target:
            return -far * 1e-9, 0.0
        a, b = far, far * 1e-9  # magnitudes: -a spends more than the target, -b does not
    else:
        floor = float(cal.cost[:, 0].mean())
        if floor > target * (1 + 1e-12):
            share = floor / max(cal.cost.sum(axis=1).mean(), 1e-300)
            raise InputError(f"{budget} is below what one sample per problem costs ({share:.3f} of Best-of-N's); "
                             f"give at least that", "budget")
        b = 1.0 / unit
        while spent(b) > target:
            b *= 4.0
        a = b / 4.0 if spent(b / 4.0) > target else 0.0
        a = a or b * 1e-9
    for _ in range(60):
        mid = math.sqrt(a * b)
        if spent(sign * mid) <= target:
            b = mid
        else:
            a = mid
        if max(a, b) / min(a, b) < 1.0001:
            break
    return sign * a, sign * b
