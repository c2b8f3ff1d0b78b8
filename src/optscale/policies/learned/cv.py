"""``policy fit`` tunes itself: K-fold cross-validation over the calibration problems.

Candidates are (selection rule, state design, shrinkage). The rules are those the pool supports
(``best``, ``majority``, ``weighted``; ``majority`` alone without scores). The state designs of
``features="auto"`` (:data:`DESIGNS`) combine the features of :data:`FEATURES`:

- ``score``: quantile bins (4 or 8) of the best score so far;
- ``agree``: how many samples share the returned answer (capped at ``DEFAULT_AGREE_CAP``);
- ``margin``: the leader's count minus the runner-up's (capped at ``DEFAULT_MARGIN_CAP``);
- ``consensus``: the returned answer is also the most frequent and holds the best score;
- ``length``: tercile of the returned sample's tokens;

and the design with none (``n`` only): with a lambda its table is the best fixed N of the
calibration pool; with a budget it is tried both ways, fitted (a lambda mixture along the
calibration curve's hull) and as the fixed N of the budget (two neighbouring N of
:func:`.fit.fixed_path`, the calibration curve's hull up to its most accurate N, mixed per problem
to meet the budget; the folds score it along every N of :func:`.fit.fixed_ns`, which picks nothing
on them and can only understate the hull's mixture). Each design is tried with the
shrinkages of :data:`SHRINKS`. For each fold, every candidate is fitted on the other folds at each
lambda of a grid and replayed on the fold; the folds' outcomes pooled give a held-out curve
(tokens, accuracy) per candidate.

**Criterion.** With a budget F: held-out accuracy at F x Best-of-N_max's tokens (linear between
the two grid lambdas around it, as the per-problem mixture realises it); with a lambda: held-out
accuracy minus lambda x tokens (the table's own objective). Ties go to fewer tokens. A candidate
that does not beat the held-out folds' fixed-N envelope (every rule the pool supports, N = 1..
N_max, the upper concave hull of (tokens, accuracy)) at its tokens loses to the fixed N of the
budget (with a lambda: the best ``n``-only table). Without scores the search starts from a
default and leaves it only for a significantly better candidate (:meth:`_Search.choose`). The
estimate kept in the table: the chosen candidate's held-out accuracy, its tokens as a
share of Best-of-N_max's, and its gain over the envelope with a 95% paired bootstrap interval over
problems.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from scipy import sparse

from ...checks import check_int
from ...errors import InputError
from ..base import ReplayBatch
from ..common import N_MAX_LIMIT
from ..selection import Selection
from ..consensus import relabel
from .fit import _check_cost, fixed_ns, _features, _finish, _induction, _rule, _shrunk, _Stats, check_pool
from .state import (DEFAULT_AGREE_CAP, DEFAULT_LENGTH_BINS, DEFAULT_MARGIN_CAP, DEFAULT_SHRINK, MAX_AGREE_CAP,
                    MAX_BINS, MAX_LENGTH_BINS, _size_error)
from .table import StoppingTable

#: Feature names ``--features`` takes (a comma-separated list of these, or ``auto``, or ``n``).
FEATURES = ("score", "agree", "margin", "consensus", "length")
#: State designs of ``features="auto"``: (features, score bins).
DESIGNS: tuple[tuple[tuple[str, ...], int], ...] = (
    ((), 1),
    (("score", "agree", "consensus", "length"), 8),
    (("score", "agree", "consensus"), 8),
    (("score", "agree", "consensus"), 4),
    (("score", "agree", "margin", "consensus"), 4),
    (("score", "margin"), 4),
    (("score", "agree"), 8),
    (("agree", "margin"), 1),
    (("agree",), 1),
    (("margin",), 1),
)
#: The default design of a pool without scores (at ``DEFAULT_SHRINK``): n and the leader's margin, the
#: state of Bayes-factor stopping on vote counts (``boinf``).
PRIOR = ("margin",)
#: Shrinkages tried for each design (pseudo-rows toward the coarser state).
SHRINKS = (5.0, DEFAULT_SHRINK, 80.0)
#: Default number of folds.
DEFAULT_FOLDS = 5
#: Lambdas of the grid, times the mean cost of one sample: rewards (a budget above what lambda 0 spends),
#: 0, and costs.
_GRID = np.concatenate([-np.geomspace(1.0, 1e-4, 4), [0.0], np.geomspace(1e-4, 1.0, 13)])
#: The finer grid of the ``n``-only tables (one state per n: cheap), so that none of the fixed N on
#: the calibration curve's hull is skipped.
_FINE_GRID = np.concatenate([-np.geomspace(1.0, 1e-5, 20), [0.0], np.geomspace(1e-5, 1.0, 100)])
#: Bootstrap resamples of the gain's interval.
BOOTSTRAP = 400
#: A candidate replaces the default (the fixed N of the budget) only where this lower quantile of its
#: paired bootstrap gain over the default is above 0 (one-sided 90%).
LEVEL = 0.10
#: Calibration rows (problem x order) the search replays at most: a pool of many problems is searched on
#: its first orders only (10,000 problems: 2 of 4), the chosen table is fitted on all of them.
SEARCH_ROWS = 20_000


@dataclass(frozen=True)
class Candidate:
    select: str
    features: tuple[str, ...]
    bins: int
    shrink: float
    agree_cap: int = DEFAULT_AGREE_CAP
    length_bins: int = DEFAULT_LENGTH_BINS
    #: n only, stopping at the fixed N of the budget (mixed with the next N to meet it), not a fitted lambda
    fixed: bool = False

    def settings(self) -> dict:
        """Arguments of :func:`fit_table` for this design."""
        f = set(self.features)
        return {"bins": self.bins if "score" in f else 1, "agree_cap": self.agree_cap if "agree" in f else 0,
                "margin_cap": DEFAULT_MARGIN_CAP if "margin" in f else 0, "consensus": "consensus" in f,
                "length_bins": self.length_bins if "length" in f else 1, "shrink": self.shrink}

    def text(self) -> str:
        if self.fixed:
            return f"select={self.select}, features=n only, the fixed N of the budget"
        feats = "+".join(self.features) or "n only"
        return f"select={self.select}, features={feats}" + (f" ({self.bins} bins)" if "score" in self.features
                                                            else "") + f", shrink={self.shrink:g}"


def parse_features(text: str | None) -> tuple[str, ...] | None:
    """``auto``/None -> None (search); ``n`` -> (); else a comma-separated subset of :data:`FEATURES`."""
    if text is None or text.strip() == "auto":
        return None
    names = tuple(x.strip() for x in text.split(",") if x.strip())
    if names == ("n",):
        return ()
    unknown = [x for x in names if x not in FEATURES]
    if unknown or not names:
        raise InputError(f"unknown feature {unknown[0] if unknown else text!r}; give auto, n (n only) or a "
                         f"comma-separated list of {', '.join(FEATURES)}", "features")
    return tuple(dict.fromkeys(names))


def fit_auto(batch: ReplayBatch, n_max: int, select: str = "auto", features: str | tuple | None = None,
             folds: int = DEFAULT_FOLDS, lam: float | None = None, budget: float | None = None,
             bins: int | None = None, shrink: float | None = None, agree_cap: int = DEFAULT_AGREE_CAP,
             length_bins: int = DEFAULT_LENGTH_BINS, consensus: bool = True, source: dict | None = None,
             strict: bool = True, seed: int = 0, labels: str = "gold") -> StoppingTable:
    """Choose the candidate by ``folds``-fold cross-validation, fit it on the whole batch, and record
    the choice and the cross-validated estimate in ``fitted.cross_validated``. ``select`` "auto"
    tries every rule the pool supports; ``features`` None/"auto" tries :data:`DESIGNS`, a tuple (or
    comma-separated text) fixes the design; ``bins``/``shrink`` fix those, ``agree_cap`` and
    ``length_bins`` size those features, ``consensus`` False drops that one. ``labels`` "consensus"
    (no gold) judges every candidate, and the envelope of its rule, by agreement with the answer its
    own rule returns on all ``n_max`` samples (:func:`~optscale.policies.consensus.relabel`).
    Errors name
    ``folds``, ``features``, ``select``, ``budget``, ``n_max``, a size argument or the pool."""
    _check_cost(lam, budget)
    if isinstance(features, str) or features is None:
        features = parse_features(features)
    agree_cap = check_int(agree_cap, "agree_cap", 1, MAX_AGREE_CAP)
    length_bins = check_int(length_bins, "length_bins", 1, MAX_LENGTH_BINS)
    if bins is not None:
        bins = check_int(bins, "bins", 1, MAX_BINS)
    if shrink is not None and not (isinstance(shrink, (int, float)) and math.isfinite(shrink) and shrink >= 0):
        raise InputError(f"must be a number >= 0, got {shrink!r}", "shrink")
    check_int(n_max, "n_max", 1, N_MAX_LIMIT)
    too_big = _size_error(n_max, bins or 8, agree_cap, consensus, length_bins, DEFAULT_MARGIN_CAP)
    if too_big:
        raise InputError(too_big, "agree_cap" if agree_cap > DEFAULT_AGREE_CAP else "bins"
                         if (bins or 8) > 8 else "length_bins" if length_bins > DEFAULT_LENGTH_BINS else "n_max")
    rules = _rules(batch, select)
    check_pool(batch, n_max)
    p = batch.shape[0]
    folds = check_int(folds, "folds", 2, 10**6)
    if folds > p:
        raise InputError(f"{folds} folds need at least {folds} calibration problems; the pool has {p}", "folds")
    shrinks = SHRINKS if shrink is None else (float(shrink),)
    designs = DESIGNS if features is None else ((tuple(features), bins or 8),)
    if bins is not None and features is None:
        designs = tuple((f, bins if "score" in f else 1) for f, _ in DESIGNS)
    if not consensus:
        designs = tuple((tuple(x for x in f if x != "consensus"), b) for f, b in designs)
    keep = max(1, min(batch.shape[1], SEARCH_ROWS // p))
    seen = batch if keep == batch.shape[1] else replace(
        batch, score=batch.score[:, :keep], answer=batch.answer[:, :keep], tokens=batch.tokens[:, :keep],
        correct=batch.correct[:, :keep], cache={})
    search = _Search(seen, n_max, folds, lam, budget, seed)
    best, preps = None, {}
    for rule in rules:
        prep = preps[rule] = _features(relabel(seen, labels, rule, n_max), n_max, rule)
        search.add_envelope(prep)
        floor = float(prep.cost[:, 0].mean() / max(prep.cost.sum(axis=1).mean(), 1e-300))
        if budget is not None and floor > budget * (1 + 1e-12):
            raise InputError(f"{budget} is below what one sample per problem costs ({floor:.3f} of Best-of-N's); "
                             "give at least that", "budget")
        cands = []
        for feats, b in designs:
            if not prep.has_scores:
                feats = tuple(x for x in feats if x not in ("score", "consensus"))
            cands.append(Candidate(rule.value, feats, b if "score" in feats else 1, 0.0, agree_cap, length_bins))
        if budget is not None and (features is None or not features):
            cands.append(Candidate(rule.value, (), 1, 0.0, fixed=True))
        for cand in dict.fromkeys(cands):
            for result in search.evaluate(prep, cand, shrinks):
                best = _better(best, result)
    env = search.envelope()
    chosen = search.choose(env, batch.has_scores) if features is None else best
    if features == ():  # n only: the fixed N of the budget (with a lambda: the best n-only table)
        chosen = max([r for r in search.results if r.cand.fixed] or search.results, key=_key)
    estimate = search.estimate(chosen, env)
    rule = Selection(chosen.cand.select)
    final = relabel(batch, labels, rule, n_max)
    prep = preps[rule] if seen is batch else _features(final, n_max, rule)
    s = chosen.cand.settings()
    cal, edges, length_edges = prep.calibration(s["bins"], s["agree_cap"], s["margin_cap"], s["consensus"],
                                                s["length_bins"] > 1)
    table = _finish(final, cal, prep.rule, edges, length_edges, prep.cost_name, n_max, lam, budget, s["shrink"],
                    source, strict, chosen.cand.features or ("n",), labels, fixed=chosen.cand.fixed)
    estimate["summary"] = summary(estimate, table)
    return replace(table, fitted={**table.fitted, "cross_validated": estimate})


def summary(est: dict, table: StoppingTable) -> str:
    """The one line ``policy fit`` prints: what to expect on new problems like the calibration ones."""
    lo, hi = est["gain_ci"]
    return (f"expected on new problems like these ({est['folds']}-fold cross-validation): accuracy "
            f"{100 * est['accuracy']:.1f}% with {100 * est['token_share']:.0f}% of Best-of-{table.n_max}'s "
            f"{table.cost}, {100 * est['gain']:+.1f} pp over the best fixed-N mix of equal {table.cost} "
            f"(95% interval {100 * lo:+.1f} to {100 * hi:+.1f})")


def _rules(batch: ReplayBatch, select) -> list[Selection]:
    if select is None or getattr(select, "value", select) == "auto":
        return [Selection.MAJORITY] if not batch.has_scores else [Selection.BEST, Selection.MAJORITY,
                                                                  Selection.WEIGHTED]
    rule = _rule(select)
    if not batch.has_scores and rule is not Selection.MAJORITY:
        raise InputError(f"select={rule.value} needs sample scores and {batch.source} has none; use "
                         "select=majority or auto", "select")
    return [rule]


@dataclass
class _Result:
    cand: Candidate
    right: np.ndarray  #: (rows,) held-out correctness at the criterion's point (fractional between lambdas)
    spent: np.ndarray  #: (rows,) held-out cost
    score: float
    tokens: float

    def gain(self, env) -> float:
        return float(self.right.mean() - env(self.spent.mean()))


def _key(r: _Result) -> tuple:
    """The criterion, ties to fewer tokens."""
    return round(r.score, 12), -r.tokens


def _better(a: _Result | None, b: _Result) -> _Result:
    if a is None:
        return b
    ka, kb = (round(a.score, 12), -a.tokens), (round(b.score, 12), -b.tokens)
    return b if kb > ka else a


class _Search:
    def __init__(self, batch, n_max, folds, lam, budget, seed):
        p, r, _ = batch.shape
        self.p, self.r, self.n_max, self.lam, self.budget = p, r, n_max, lam, budget
        self.fold = np.repeat(np.random.default_rng(seed).permutation(p) % folds, r)
        self.rows = [np.flatnonzero(self.fold == f) for f in range(folds)]
        self.folds = folds
        self.results: list[_Result] = []
        self.curves: list[tuple[np.ndarray, np.ndarray]] = []  # fixed-N per-row (correct, cost) of each rule
        self.seed = seed

    def add_envelope(self, prep) -> None:
        """Add a rule's fixed-N curve (per row) to the envelope; the costs are every rule's."""
        self.cumcost = np.cumsum(prep.cost, axis=1)
        self.curves.append((prep.correct.astype(float), self.cumcost))
        self.unit = float(prep.cost.mean())
        self.bon = float(self.cumcost[:, -1].mean())

    def evaluate(self, prep, cand: Candidate, shrinks):
        s = cand.settings()
        cal, _, _ = prep.calibration(s["bins"], s["agree_cap"], s["margin_cap"], s["consensus"], s["length_bins"] > 1)
        size = cal.size
        parts = [_Stats.of(cal.states[rows], cal.correct[rows], cal.cost[rows], size) for rows in self.rows]
        trains = [_Stats.total([x for g, x in enumerate(parts) if g != f]) for f in range(self.folds)]
        moves = [[sparse.csr_matrix((count, (src, dst)), shape=(size, size)) for src, dst, count in t.pairs]
                 if size > 1 else None for t in trains]
        if cand.fixed:  # the fixed-N curve itself, largest N first (tokens falling, as along the lambda grid)
            # every N of fixed_ns, not the hull of the data's curve (fixed_path, what the table uses): chosen
            # on all the folds, that hull would score each fold on N picked with its own rows
            ns = fixed_ns(prep.rule, self.n_max)[::-1] - 1
            result = self._at_criterion(cand, cal.correct[:, ns].T.astype(float), self.cumcost[:, ns].T)
            self.results.append(result)
            yield result
            return
        grid = _GRID if cand.features else _FINE_GRID
        lams = np.array([self.lam]) if self.lam is not None else grid / max(self.unit, 1e-300)
        for shrink in (shrinks if cand.features else shrinks[:1]):
            right = np.zeros((len(lams), len(self.fold)))
            spent = np.zeros_like(right)
            for f, rows in enumerate(self.rows):
                q = _shrunk(trains[f].q_sum, trains[f].q_cnt, cal.shape, shrink)
                stops = _induction_grid(trains[f], moves[f], q, lams, shrink, cal.shape)
                if size == 1:  # n only: every row stops at the same n
                    first = stops[:, :, 0].copy()
                    first[:, -1] = True
                    n = np.repeat(first.argmax(axis=1)[:, None], len(rows), axis=1)
                else:
                    states = cal.states[rows]
                    hit = stops[:, np.arange(states.shape[1])[None, :], states]  # (lambdas, rows, n)
                    hit[:, :, -1] = True
                    n = hit.argmax(axis=2)
                right[:, rows] = cal.correct[rows][np.arange(len(rows))[None, :], n]
                spent[:, rows] = self.cumcost[rows][np.arange(len(rows))[None, :], n]
            result = self._at_criterion(replace(cand, shrink=shrink), right, spent)
            self.results.append(result)
            yield result

    def _at_criterion(self, cand, right, spent) -> _Result:
        acc, tok = right.mean(axis=1), spent.mean(axis=1)
        if self.lam is not None:
            return _Result(cand, right[0], spent[0], float(acc[0] - self.lam * tok[0]), float(tok[0]))
        target = self.budget * self.bon
        # tok falls (weakly) as lambda grows: the two grid points around the target, mixed to meet it
        above = np.flatnonzero(tok > target)
        if not above.size or above[-1] == len(tok) - 1:  # within budget everywhere, or never (over: refused)
            g = 0 if not above.size else len(tok) - 1
            r, s = right[g], spent[g]
        else:
            g = above[-1]
            w = (target - tok[g + 1]) / (tok[g] - tok[g + 1])
            r, s = w * right[g] + (1 - w) * right[g + 1], w * spent[g] + (1 - w) * spent[g + 1]
        over = s.mean() > target * (1 + 1e-9)
        return _Result(cand, r, s, float(r.mean()) - (1.0 if over else 0.0), float(s.mean()))

    def choose(self, env, has_scores: bool) -> _Result:
        """The chosen candidate. With scores: the best by the criterion, unless it does not beat the
        folds' envelope, then the best ``n``-only table (the fixed N of the budget included). Without
        scores (a vote on answers, often few problems, where the folds cannot tell ~10 candidates
        apart): the :data:`PRIOR` design at ``DEFAULT_SHRINK`` (else the fixed N of the budget), left
        only for a candidate that beats the folds' envelope and beats it significantly: the lower
        :data:`LEVEL` quantile of its paired bootstrap gain over the default (problems resampled)
        above 0; of those, the best by the criterion."""
        plain = [r for r in self.results if not r.cand.features]
        plain = [r for r in plain if r.cand.fixed] or plain
        best = max(self.results, key=_key)
        if has_scores:
            return best if best.gain(env) > 0 else max(plain, key=_key)
        prior = [r for r in self.results if r.cand.features == PRIOR and r.cand.shrink == DEFAULT_SHRINK]
        base = max(prior or plain, key=_key)
        value = (lambda r: self._per(r.right)) if self.lam is None else (
            lambda r: self._per(r.right) - self.lam * self._per(r.spent))
        w = self._weights()
        ref = value(base)
        best = base
        for r in self.results:
            if r is base or r.gain(env) <= 0 or _better(best, r) is best:
                continue
            if np.quantile(w @ (value(r) - ref), LEVEL) > 0:
                best = r
        return best

    def _per(self, a: np.ndarray) -> np.ndarray:
        return a.reshape(self.p, self.r).mean(axis=1)

    def _weights(self) -> np.ndarray:
        rng = np.random.default_rng(self.seed)
        return rng.multinomial(self.p, np.full(self.p, 1.0 / self.p), size=BOOTSTRAP) / self.p

    def envelope(self):
        xs = np.concatenate([[0.0]] + [c.mean(axis=0) for _, c in self.curves])
        ys = np.concatenate([[0.0]] + [r.mean(axis=0) for r, _ in self.curves])
        return lambda x: float(_hull_at(xs[None], ys[None], np.array([x]))[0])

    def estimate(self, res: _Result, env) -> dict:
        """Held-out accuracy, token share and the gain over the envelope with a paired bootstrap interval."""
        right, spent = self._per(res.right), self._per(res.spent)
        fx = np.concatenate([np.zeros((self.p, 1))] + [per_problem(c, self.p, self.r) for _, c in self.curves], 1)
        fy = np.concatenate([np.zeros((self.p, 1))] + [per_problem(r, self.p, self.r) for r, _ in self.curves], 1)
        w = self._weights()
        gains = (w @ right) - _hull_at(w @ fx, w @ fy, w @ spent)
        lo, hi = np.quantile(gains, [0.025, 0.975])
        return {"folds": self.folds, "candidates": len(self.results),
                "criterion": ("held-out accuracy at the budget" if self.lam is None else
                              "held-out accuracy minus lambda x tokens") + "; ties to fewer tokens",
                "chosen": res.cand.text(),
                "accuracy": float(right.mean()), "token_share": float(spent.mean() / self.bon),
                "envelope_accuracy": env(float(spent.mean())), "gain": res.gain(env),
                "gain_ci": [float(lo), float(hi)]}


def per_problem(a: np.ndarray, p: int, r: int) -> np.ndarray:
    return a.reshape(p, r, -1).mean(axis=1)


def _induction_grid(stats: _Stats, moves, q: np.ndarray, lams: np.ndarray, shrink: float, shape) -> np.ndarray:
    """:func:`._induction` for every lambda at once (``moves``: each step's transition counts as a
    sparse matrix): stop decisions ``(lambdas, n_max, states)``."""
    width, size = q.shape
    if moves is None or len(lams) == 1:
        return np.stack([_induction(stats, q, float(lam), shrink, shape) for lam in lams])
    stop = np.ones((len(lams), width, size), dtype=bool)
    value = np.repeat(q[width - 1][None], len(lams), axis=0)
    for j in range(width - 2, -1, -1):
        after = (moves[j] @ value.T).T - lams[:, None] * stats.c_sum[j][None]
        cont = _shrunk(after, stats.q_cnt[j], shape, shrink)
        stop[:, j] = q[j][None] >= cont
        value = np.maximum(q[j][None], cont)
    return stop


def _hull_at(xs: np.ndarray, ys: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Upper concave envelope of the points ``(xs[b], ys[b])`` at ``x[b]`` for each row ``b``: the best
    mix of two points (or one) whose mean x is ``x`` (beyond the largest x: the best y)."""
    left = xs <= x[:, None] + 1e-12
    right = xs >= x[:, None] - 1e-12
    out = np.where(left, ys, -np.inf).max(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        for i in range(xs.shape[1]):
            xi, yi = xs[:, i:i + 1], ys[:, i:i + 1]
            line = yi + (x[:, None] - xi) / (xs - xi) * (ys - yi)
            ok = left[:, i:i + 1] & right & (xs > xi)
            out = np.maximum(out, np.where(ok, line, -np.inf).max(axis=1))
    return out
