"""What a replay measured: accuracy with uncertainty, cost, and the honest fixed-N baseline.

An adaptive rule only pays if it beats every *fixed* way of spending the same tokens. The
fixed methods are N = 1..n_max samples with each selection rule (``best`` score, ``majority``
vote, score-``weighted`` vote; majority only for answer-only pools), each point the accuracy
and mean tokens averaged over problems and sample orders. Flipping a biased coin per problem
between two fixed methods spends and earns the coin's mixture of theirs, so every point on a
segment between two fixed methods is itself a fixed method, and one that spends no more
tokens can always be chosen. The honest baseline is therefore the **envelope**: the least
concave, non-decreasing majorant of all fixed points,

    E(t) = max { lambda A_i + (1 - lambda) A_j : lambda T_i + (1 - lambda) T_j <= t },

undefined below the cheapest fixed method (N = 1) and flat at the best fixed accuracy beyond
the cheapest method that reaches it. Policies are compared with E at their own mean tokens
(``gain_vs_envelope``) and with the most accurate single fixed method that costs no more
(``best_fixed_method``). The older comparison with the Best-of-N curve alone (linear
interpolation of BoN@N, ``gain_vs_bon_curve``) is kept beside it.

**Calibrated envelope.** E picks the rule and N on the very problems it is measured on, so even
the fixed method that is best on other problems of the same kind falls below it by the noise
of that choice (0.1-0.2 pp on 1,000 problems; several pp on 15). Where a policy was tuned on
calibration problems, the honest baseline makes its choices there too: the fixed methods on
the calibration problems' envelope (its hull's N, each with its best rule there), measured on
the held-out problems and mixed along N at the policy's tokens
(``gain_vs_calibrated_envelope``, :meth:`Baseline.calibrated`). A ``learned`` table that stops
every problem at the fixed N of its budget lands on it where that N (with the table's rule) is one
of its vertices, and near it otherwise; E stays beside it as the stricter, hindsight bound. Wins
are counted where a gain exceeds :data:`TIE` (a policy on a vertex scores about 1e-17 either way).

**Paired bootstrap.** The gain's 95% interval resamples *problems* (with replacement, the same
resample for the policy and for every fixed method), recomputes the fixed points, their
envelope and the policy's accuracy and tokens on each resample, and takes the 2.5% and 97.5%
quantiles of accuracy minus envelope at the resample's own policy tokens. Problem difficulty
moves policy and baseline together, so the paired interval is much narrower than comparing two
independent intervals (tests check both its coverage and that).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Iterator, Sequence

import numpy as np

from ..policies.base import ReplayBatch, ReplayDecisions
from ..policies.episode import score_or_zero
from ..policies.selection import SELECTIONS
from ..stats.hull import TOL as _TOL, upper_envelope

__all__ = ["BonCurve", "Baseline", "Bootstrap", "FixedCurves", "PolicyStats", "RULES", "ReplayOutcome", "TIE",
           "bon_curve", "envelope_value", "evaluate", "fixed_curves", "outcome_of", "policy_stats", "upper_envelope"]

#: The fixed-N selection rules of the envelope (``bon --set select=<rule>`` at N samples): every
#: registered rule (:data:`~optscale.policies.selection.SELECTIONS`), so a new one enters the envelope.
RULES = tuple(SELECTIONS.names())
#: A gain within this of 0 is a tie, not a win or a loss (a policy on a vertex of an envelope: the same
#: sums in another order).
TIE = 1e-9


@dataclass(frozen=True)
class BonCurve:
    """Fixed-N Best-of-N accuracy and cost for N = 1..n_max on one batch (majority vote for answer-only pools)."""

    n: np.ndarray
    accuracy: np.ndarray
    mean_tokens: np.ndarray
    mean_samples: np.ndarray

    def accuracy_at_tokens(self, tokens: float) -> float:
        """Linear interpolation on the curve (what mixing two neighbouring fixed N achieves)."""
        if tokens < self.mean_tokens[0]:
            return float("nan")
        return float(np.interp(tokens, self.mean_tokens, self.accuracy))

    def best_within_tokens(self, tokens: float) -> tuple[int, float]:
        """The most accurate fixed N whose mean cost is at most ``tokens`` (0, nan if none)."""
        ok = self.mean_tokens <= tokens * (1 + _TOL)
        if not ok.any():
            return 0, float("nan")
        i = int(np.argmax(np.where(ok, self.accuracy, -np.inf)))
        return int(self.n[i]), float(self.accuracy[i])

    def rows(self) -> list[dict]:
        return [
            {"n": int(n), "accuracy": float(a), "mean_tokens": float(t), "mean_samples": float(s)}
            for n, a, t, s in zip(self.n, self.accuracy, self.mean_tokens, self.mean_samples)
        ]


@dataclass(frozen=True)
class FixedCurves:
    """Every fixed-N method's accuracy per problem (mean over orders) and its cost, N = 1..n_max."""

    rules: tuple[str, ...]
    accuracy: np.ndarray  # (rules, N, P)
    tokens: np.ndarray  # (N, P) mean tokens of the first N samples (capped at what a problem has)
    samples: np.ndarray  # (N, P)

    @property
    def n_max(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def problems(self) -> int:
        return int(self.tokens.shape[1])

    def take(self, idx) -> FixedCurves:
        idx = np.asarray(idx, dtype=np.int64)
        return FixedCurves(self.rules, self.accuracy[:, :, idx], self.tokens[:, idx], self.samples[:, idx])

    @staticmethod
    def concat(parts: Sequence[FixedCurves]) -> FixedCurves:
        if len(parts) == 1:
            return parts[0]
        return FixedCurves(parts[0].rules, np.concatenate([p.accuracy for p in parts], axis=2),
                           np.concatenate([p.tokens for p in parts], axis=1),
                           np.concatenate([p.samples for p in parts], axis=1))

    def bon(self) -> BonCurve:
        """The Best-of-N curve (the majority-vote curve where the pool has no scores)."""
        k = self.rules.index("best") if "best" in self.rules else 0
        return BonCurve(np.arange(1, self.n_max + 1), self.accuracy[k].mean(axis=1), self.tokens.mean(axis=1),
                        self.samples.mean(axis=1))

    def rows(self) -> list[dict]:
        """One row per (rule, N): accuracy and mean tokens over all problems."""
        acc, tok = self.accuracy.mean(axis=2), self.tokens.mean(axis=1)
        return [{"rule": rule, "n": n + 1, "accuracy": float(acc[k, n]), "mean_tokens": float(tok[n])}
                for k, rule in enumerate(self.rules) for n in range(self.n_max)]


def fixed_curves(batch: ReplayBatch, n_max: int | None = None, rules: Sequence[str] | None = None) -> FixedCurves:
    """Every fixed-N method at once, in one pass over positions.

    ``best`` keeps a running argmax (earliest wins ties); the votes keep running tallies per
    answer and the current winner, which can only change to the answer just counted (ties go
    to the answer seen first), and return the winner's best-scored sample, exactly as
    :func:`optscale.policies.selection.select` does for the first N samples.
    """
    has_scores = getattr(batch, "has_scores", True)
    rules = tuple(rules or (RULES if has_scores else ("majority",)))
    p, r, n = batch.shape
    n_max = int(n_max or n)
    score, answer = batch.flat("score"), batch.flat("answer")
    correct, tokens = batch.flat("correct"), batch.flat("tokens")
    available = batch.flat_available()
    b = score.shape[0]
    rows = np.arange(b)
    acc = np.zeros((len(rules), n_max, p))
    tok = np.zeros((n_max, p))
    best = np.zeros(b, dtype=np.int64)
    spent = np.zeros(b)
    votes = [x for x in rules if x in ("majority", "weighted")]  # running tallies; other rules: their own code
    if votes:
        k = max(1, int(answer.max()) + 1)
        first = np.full((b, k), n, dtype=np.int32)
        top_pos = np.full((b, k), -1, dtype=np.int32)
        top_score = np.full((b, k), -np.inf)
        tally = {v: np.zeros((b, k)) for v in votes}
        winner = {v: np.full(b, -1, dtype=np.int64) for v in votes}
    per_problem = lambda x: x.reshape(p, r).mean(axis=1)  # noqa: E731
    for j in range(min(n_max, n)):
        inside = j < available
        better = inside & (score[:, j] > score[rows, best])
        best = np.where(better, j, best)
        spent += np.where(inside, tokens[:, j], 0.0)
        if votes:
            code = answer[:, j]
            ok = inside & (code >= 0)
            rv, cv = rows[ok], code[ok]
            fresh = first[rv, cv] == n
            first[rv[fresh], cv[fresh]] = j
            sv = score[rv, j]
            up = (top_pos[rv, cv] < 0) | (sv > top_score[rv, cv])
            top_pos[rv[up], cv[up]] = j
            top_score[rv[up], cv[up]] = sv[up]
            for v in votes:
                tally[v][rv, cv] += 1.0 if v == "majority" else score[rv, j]
                w = winner[v][rv]
                ws = np.maximum(w, 0)
                tc, tw = tally[v][rv, cv], tally[v][rv, ws]
                take = (w < 0) | (w == cv) | (tc > tw) | ((tc == tw) & (first[rv, cv] < first[rv, ws]))
                winner[v][rv[take]] = cv[take]
        for i, rule in enumerate(rules):
            if rule == "best":
                hit = correct[rows, best]
            elif rule in votes:
                w = winner[rule]
                pos = top_pos[rows, np.maximum(w, 0)]
                hit = (w >= 0) & correct[rows, np.maximum(pos, 0)]
            else:
                used = np.arange(n)[None, :] < np.minimum(j + 1, available)[:, None]
                pos = SELECTIONS.get(rule)(score_or_zero(score), answer, used)
                hit = (pos >= 0) & correct[rows, np.maximum(pos, 0)]
            acc[i, j] = per_problem(hit)
        tok[j] = per_problem(spent)
    for j in range(min(n_max, n), n_max):  # beyond the pool's widest problem nothing changes
        acc[:, j], tok[j] = acc[:, j - 1], tok[j - 1]
    samples = np.minimum(np.arange(1, n_max + 1)[:, None], batch.available[None, :]).astype(float)
    return FixedCurves(rules, acc, tok, samples)


def bon_curve(batch: ReplayBatch, n_max: int | None = None) -> BonCurve:
    """Best-of-N for every N at once (majority vote where the batch has no scores)."""
    rule = "best" if getattr(batch, "has_scores", True) else "majority"
    return fixed_curves(batch, n_max, rules=(rule,)).bon()


# -- the envelope ----------------------------------------------------------------------------


def envelope_value(vx: np.ndarray, vy: np.ndarray, count: np.ndarray, t: np.ndarray) -> np.ndarray:
    """E(t) for rows of padded hull vertices ``vx, vy`` (``(B, V)``, ``count`` used) and ``t`` ``(B, G)``.

    NaN where ``t`` is below the cheapest fixed method.
    """
    t = np.asarray(t, dtype=float)
    x0 = vx[:, :1]
    t = np.where((t < x0) & (t >= x0 * (1 - _TOL)), x0, t)
    k = (vx[:, None, :] <= t[:, :, None]).sum(axis=2)
    rows = np.arange(vx.shape[0])[:, None]
    lo = np.clip(k - 1, 0, None)
    hi = np.minimum(k, count[:, None] - 1)
    xl, yl, xh, yh = vx[rows, lo], vy[rows, lo], vx[rows, hi], vy[rows, hi]
    with np.errstate(invalid="ignore", divide="ignore"):
        mid = yl + (yh - yl) * (t - xl) / (xh - xl)
    out = np.where(hi > lo, mid, yl)
    return np.where(k == 0, np.nan, out)


class Bootstrap:
    """``resamples`` seeded resamples of ``problems`` problems with replacement, as count weights.

    The same resamples serve every policy and every fixed method of one problem set: that is
    what pairs the comparison. They are drawn again from the seed, a block at a time, whenever
    they are used (:meth:`means`), instead of being kept: a ``(resamples, problems)`` table
    would grow with the pool.
    """

    #: Resamples weighted at once: :meth:`means` holds ``(_STEP, problems)`` float weights.
    _STEP = 256

    def __init__(self, problems: int, resamples: int = 2000, seed: int = 0):
        self.problems, self.resamples = int(problems), int(resamples)
        # the generator's state, so that every pass draws the same resamples (a Generator given as seed included)
        self._start = np.random.default_rng(seed).bit_generator.state

    def blocks(self) -> Iterator[tuple[int, np.ndarray]]:
        """``(first resample, counts)`` for consecutive blocks of resamples, counts as floats ``(rows, P)``.

        Every block is the same buffer, refilled: use it before asking for the next one.
        """
        bits = getattr(np.random, self._start["bit_generator"])()
        bits.state = self._start
        rng = np.random.Generator(bits)
        buffer = np.empty((min(self._STEP, self.resamples), self.problems))
        for start in range(0, self.resamples, self._STEP):
            block = buffer[:min(self._STEP, self.resamples - start)]
            for row in block:
                row[:] = np.bincount(rng.integers(0, self.problems, size=self.problems), minlength=self.problems)
            yield start, block

    @property
    def counts(self) -> np.ndarray:
        """Every resample's counts ``(resamples, problems)`` (a table this large is built on request only)."""
        return np.concatenate([block.astype(np.uint32) for _, block in self.blocks()])

    def means(self, values: np.ndarray) -> np.ndarray:
        """Resampled means of per-problem ``values`` ``(P,)`` or ``(P, G)``: ``(B,)`` or ``(B, G)``."""
        return self.means_of(values)[0]

    def means_of(self, *values: np.ndarray) -> list[np.ndarray]:
        """:meth:`means` of several arrays, drawing the resamples once."""
        arrays = [np.asarray(v, dtype=float) for v in values]
        out = [np.empty((self.resamples, *v.shape[1:])) for v in arrays]
        for start, block in self.blocks():
            for v, o in zip(arrays, out):
                o[start:start + len(block)] = block @ v
        return [o / self.problems for o in out]


@dataclass
class _Envelope:
    """The envelope of fixed methods up to one n_max: point estimate and its bootstrap resamples."""

    tokens: np.ndarray  # (N,) fixed points: mean tokens of N = 1..n_max
    accuracy: np.ndarray  # (N,) best rule's accuracy at each N
    rule: np.ndarray  # (N,) index of that rule
    all_accuracy: np.ndarray  # (rules, N)
    hull: list[int]
    vx: np.ndarray  # (B, V) resampled hull vertices, padded
    vy: np.ndarray
    count: np.ndarray


@dataclass
class _Path:
    """A calibrated envelope (:meth:`Baseline.calibrated`): the calibration's hull methods on these problems."""

    tokens: np.ndarray  # (V,) their mean tokens here (increasing: more samples)
    accuracy: np.ndarray  # (V,) their accuracy here
    vx: np.ndarray  # (B, V) the same on each bootstrap resample of these problems
    vy: np.ndarray

    def at(self, tokens: np.ndarray) -> np.ndarray:
        """Accuracy of the path at ``tokens`` (linear between its methods, flat past the last; NaN before the first)."""
        t = np.atleast_1d(np.asarray(tokens, dtype=float))
        return envelope_value(self.tokens[None], self.accuracy[None], np.array([len(self.tokens)]), t[None])[0]

    def resampled(self, tokens: np.ndarray) -> np.ndarray:
        """:meth:`at` on each resample, for per-resample ``tokens`` ``(B, G)``."""
        return envelope_value(self.vx, self.vy, np.full(self.vx.shape[0], self.vx.shape[1]), tokens)


class Baseline:
    """The honest baseline of one set of problems: its fixed curves, envelope and bootstrap."""

    def __init__(self, curves: FixedCurves, resamples: int = 2000, seed: int = 0):
        self.curves = curves
        self.bootstrap = Bootstrap(curves.problems, resamples, seed)
        self._envelopes: dict[int, _Envelope] = {}
        self._boot_points: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def rules(self) -> tuple[str, ...]:
        return self.curves.rules

    def label(self, rule: int, n: int) -> str:
        return f"{self.rules[rule]}@{n}"

    def _resampled_points(self) -> tuple[np.ndarray, np.ndarray]:
        if self._boot_points is None:
            c = self.curves
            nr, nn = len(c.rules), c.n_max
            acc, tok = self.bootstrap.means_of(c.accuracy.reshape(nr * nn, -1).T, c.tokens.T)
            self._boot_points = acc.reshape(-1, nr, nn).max(axis=1), tok
        return self._boot_points

    def _points(self, n_max: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[int]]:
        """The fixed points up to ``n_max`` (point estimates): every rule's accuracy, mean tokens, the best
        rule at each N and its accuracy, and the N (0-based) on the upper concave hull."""
        all_acc = self.curves.accuracy[:, :n_max].mean(axis=2)
        tok = self.curves.tokens[:n_max].mean(axis=1)
        rule = np.argmax(all_acc, axis=0)
        acc = all_acc.max(axis=0)
        return all_acc, tok, rule, acc, [int(i) for i in np.flatnonzero(upper_envelope(tok, acc))]

    def envelope(self, n_max: int) -> _Envelope:
        n_max = int(min(n_max, self.curves.n_max))
        if n_max not in self._envelopes:
            all_acc, tok, rule, acc, hull = self._points(n_max)
            boot_acc, boot_tok = self._resampled_points()
            bt, ba = boot_tok[:, :n_max], boot_acc[:, :n_max]
            alive = upper_envelope(bt, ba)
            order = np.argsort(~alive, axis=1, kind="stable")  # vertices first, in cost order
            count = alive.sum(axis=1)
            vx = np.take_along_axis(np.where(alive, bt, np.inf), order, axis=1)
            vy = np.take_along_axis(ba, order, axis=1)
            width = int(count.max())
            vx, vy = vx[:, :width], vy[:, :width]
            self._envelopes[n_max] = _Envelope(tok, acc, rule, all_acc, hull, vx, vy, count)
        return self._envelopes[n_max]

    def at(self, n_max: int, tokens: float) -> dict:
        """Envelope, its mixture and the best single fixed method at ``tokens`` (point estimates)."""
        env = self.envelope(n_max)
        hx, hy = env.tokens[env.hull], env.accuracy[env.hull]
        value = float(envelope_value(hx[None, :], hy[None, :], np.array([len(hx)]), np.array([[tokens]]))[0, 0])
        mix = ""
        if not math.isnan(value):
            k = int(np.searchsorted(hx, tokens, side="right"))
            if k >= len(hx) or k == 0:
                i = env.hull[-1] if k >= len(hx) else env.hull[0]
                mix = self.label(int(env.rule[i]), i + 1)
            else:
                i, j = env.hull[k - 1], env.hull[k]
                lam = (hx[k] - tokens) / (hx[k] - hx[k - 1])
                mix = (f"{lam:.2f} x {self.label(int(env.rule[i]), i + 1)} + "
                       f"{1 - lam:.2f} x {self.label(int(env.rule[j]), j + 1)}")
        ok = env.tokens <= tokens * (1 + _TOL)
        best_label, best_acc, best_tok = "", float("nan"), float("nan")
        if ok.any():
            masked = np.where(ok[None, :], env.all_accuracy, -np.inf)
            # most accurate; on ties the smaller N, then the rule listed first
            flat = int(np.argmax(masked.T.ravel()))
            n_i, r_i = divmod(flat, len(self.rules))
            best_label, best_acc, best_tok = self.label(r_i, n_i + 1), float(masked[r_i, n_i]), float(env.tokens[n_i])
        top = env.hull[-1]
        return {"envelope_accuracy_same_tokens": value, "envelope_mix": mix, "best_fixed_method": best_label,
                "best_fixed_method_accuracy": best_acc, "best_fixed_method_tokens": best_tok,
                "envelope_best_accuracy": float(env.accuracy[top]), "envelope_best_tokens": float(env.tokens[top]),
                "envelope_best_method": self.label(int(env.rule[top]), top + 1)}

    def resampled_gain(self, n_max: int, correct: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """Paired bootstrap of accuracy minus envelope for per-problem ``correct``/``tokens`` ``(P, G)``: ``(B, G)``."""
        env = self.envelope(n_max)
        acc, tok = self.bootstrap.means_of(correct, tokens)
        return acc - envelope_value(env.vx, env.vy, env.count, tok)

    def calibrated(self, n_max: int, calibration: Baseline) -> _Path:
        """The **calibrated envelope** on these problems: the fixed methods that ``calibration`` (a
        baseline of other problems, e.g. a calibration half) puts on its envelope up to ``n_max``
        (its hull's N, each with its most accurate rule there), measured here and joined in N order
        (mixing neighbours, as there). It is what a fixed-N method tuned on the calibration
        problems earns on these: no choice is made on them, unlike :meth:`envelope`, whose rule and
        N are the best of these problems in hindsight (so it is never below this one)."""
        n_max = int(min(n_max, self.curves.n_max, calibration.curves.n_max))
        if tuple(calibration.rules) != tuple(self.rules):
            raise ValueError(f"the calibration baseline's rules {calibration.rules} differ from {self.rules}")
        _, _, best, _, hull = calibration._points(n_max)
        n = np.array(hull, dtype=np.int64)
        acc, tok = self.curves.accuracy[best[n], n].T, self.curves.tokens[n].T  # (P, V)
        vy, vx = self.bootstrap.means_of(acc, tok)
        return _Path(tok.mean(axis=0), acc.mean(axis=0), vx, vy)

    def rows(self, n_max: int) -> list[dict]:
        """The envelope's vertices (fixed methods on the hull) for one n_max."""
        env = self.envelope(n_max)
        return [{"n_max": int(n_max), "method": self.label(int(env.rule[i]), i + 1), "n": i + 1,
                 "rule": self.rules[int(env.rule[i])], "accuracy": float(env.accuracy[i]),
                 "mean_tokens": float(env.tokens[i])} for i in env.hull]


# -- one policy's outcome and its statistics ---------------------------------------------------


@dataclass(frozen=True)
class ReplayOutcome:
    """What one policy did in a replay, per problem (means over sample orders); small enough to keep for many
    policies. (Not :class:`optscale.policies.Outcome`, the result of one live episode; this was also named
    ``Outcome`` before, which still works with a deprecation warning.)"""

    correct: np.ndarray  # (P,) share of orders answered correctly
    tokens: np.ndarray  # (P,) mean tokens
    samples: np.ndarray  # (P,) mean samples drawn
    orders: int
    hits: np.ndarray | None = None  # (P,) orders whose best used score reached s_min
    capped: np.ndarray | None = None  # (P,) orders where N* exceeded the budget
    hits_uncapped: np.ndarray | None = None

    def take(self, idx) -> ReplayOutcome:
        idx = np.asarray(idx, dtype=np.int64)
        pick = lambda x: None if x is None else x[idx]  # noqa: E731
        return ReplayOutcome(self.correct[idx], self.tokens[idx], self.samples[idx], self.orders, pick(self.hits),
                             pick(self.capped), pick(self.hits_uncapped))

    @staticmethod
    def concat(parts: Sequence[ReplayOutcome]) -> ReplayOutcome:
        if len(parts) == 1:
            return parts[0]
        cat = lambda name: (None if getattr(parts[0], name) is None  # noqa: E731
                            else np.concatenate([getattr(p, name) for p in parts]))
        return ReplayOutcome(cat("correct"), cat("tokens"), cat("samples"), parts[0].orders, cat("hits"),
                             cat("capped"), cat("hits_uncapped"))


def outcome_of(batch: ReplayBatch, decisions: ReplayDecisions, policy) -> ReplayOutcome:
    """Reduce a policy's decisions on ``batch`` to per-problem means (no answer counts as wrong)."""
    p, r, n = batch.shape
    n_used, chosen = decisions.n_used, decisions.chosen
    picked = np.take_along_axis(batch.correct, np.maximum(chosen, 0)[..., None], axis=2)[..., 0]
    correct = (picked & (chosen >= 0)).mean(axis=1)
    used = np.arange(n)[None, None, :] < n_used[..., None]
    tokens = np.where(used, batch.tokens, 0.0).sum(axis=2).mean(axis=1)
    out = ReplayOutcome(correct, tokens, n_used.mean(axis=1).astype(np.float32), r)
    if "capped" in decisions.estimates and hasattr(policy, "s_min"):
        hit = np.where(used, batch.score, -np.inf).max(axis=2) >= policy.s_min
        capped = decisions.estimates["capped"].astype(bool)
        count = lambda x: x.sum(axis=1).astype(np.float32)  # noqa: E731
        out = ReplayOutcome(out.correct, out.tokens, out.samples, r, count(hit), count(capped),
                            count(hit & ~capped))
    return out


@dataclass
class PolicyStats:
    """One policy's row of a report."""

    policy: str
    label: str
    n_max: int
    accuracy: float
    ci_low: float
    ci_high: float
    mean_samples: float
    mean_tokens: float
    bon_accuracy: float  # fixed BoN at the same n_max
    bon_tokens: float
    token_savings: float  # 1 - tokens / BoN@n_max tokens
    sample_savings: float
    bon_accuracy_same_tokens: float  # BoN curve interpolated at this policy's mean tokens
    gain_vs_bon_curve: float
    best_fixed_n: int  # most accurate fixed N costing no more than this policy
    best_fixed_accuracy: float
    problems: int
    orders: int
    settings: dict = field(default_factory=dict)
    promised_alpha: float | None = None
    achieved: float | None = None  # share of (problem, order) whose best used score >= s_min
    achieved_uncapped: float | None = None  # the same where N* fit the budget (the promise applies)
    achieved_ci_low: float | None = None  # 95% bootstrap interval over problems of achieved_uncapped
    achieved_ci_high: float | None = None
    misses_alpha: bool | None = None  # the whole interval below the promised alpha: the promise is broken
    capped_share: float | None = None
    # The envelope of every fixed-N method (N <= n_max, every selection rule) at this policy's mean tokens.
    envelope_accuracy_same_tokens: float = float("nan")
    gain_vs_envelope: float = float("nan")
    gain_vs_envelope_ci_low: float = float("nan")  # paired bootstrap over problems, 95%
    gain_vs_envelope_ci_high: float = float("nan")
    beats_envelope: bool = False  # the whole interval above 0
    envelope_mix: str = ""  # e.g. "0.40 x majority@4 + 0.60 x weighted@8"
    best_fixed_method: str = ""  # most accurate single fixed method costing no more, e.g. "weighted@8"
    best_fixed_method_accuracy: float = float("nan")
    best_fixed_method_tokens: float = float("nan")
    envelope_best_accuracy: float = float("nan")  # the best fixed method up to n_max ...
    envelope_best_tokens: float = float("nan")  # ... the cheapest one reaching it ...
    envelope_best_method: str = ""
    token_share_of_envelope_best: float = float("nan")  # ... and this policy's tokens as a share of its
    # The calibrated envelope (Baseline.calibrated): the fixed methods on a calibration set's envelope, measured
    # here at this policy's tokens; set where the statistics are given that calibration (held-out halves).
    calibrated_envelope_accuracy_same_tokens: float = float("nan")
    gain_vs_calibrated_envelope: float = float("nan")
    gain_vs_calibrated_envelope_ci_low: float = float("nan")  # paired bootstrap over problems, 95%
    gain_vs_calibrated_envelope_ci_high: float = float("nan")

    def as_dict(self) -> dict:
        return asdict(self)


def policy_stats(policies: Sequence, outcomes: Sequence[ReplayOutcome], baseline: Baseline,
                 curve: BonCurve | None = None, calibration: Baseline | None = None) -> list[PolicyStats]:
    """Statistics of several policies on the problems of ``baseline`` (paired resamples, vectorised);
    with ``calibration`` (a baseline of the problems the policies were tuned on) also the gain over the
    calibrated envelope (:meth:`Baseline.calibrated`)."""
    if not policies:
        return []
    curve = curve or baseline.curves.bon()
    boot = baseline.bootstrap
    correct = np.stack([o.correct for o in outcomes], axis=1)
    tokens = np.stack([o.tokens for o in outcomes], axis=1)
    acc_boot, tok_boot = boot.means_of(correct, tokens)
    lo, hi = np.quantile(acc_boot, [0.025, 0.975], axis=0)
    gains = np.full((2, len(policies)), np.nan)
    tuned = np.full((3, len(policies)), np.nan)  # calibrated envelope at the policy's tokens, gain interval
    for n_max in sorted({int(p.n_max) for p in policies}):
        cols = [i for i, p in enumerate(policies) if int(p.n_max) == n_max]
        gains[:, cols] = _intervals(baseline.resampled_gain(n_max, correct[:, cols], tokens[:, cols]))
        if calibration is not None:
            path = baseline.calibrated(n_max, calibration)
            tuned[0, cols] = path.at(tokens[:, cols].mean(axis=0))
            # no point estimate (tokens below the cheapest method): no interval either
            tuned[1:, cols] = np.where(np.isnan(tuned[0, cols]), np.nan,
                                       _intervals(acc_boot[:, cols] - path.resampled(tok_boot[:, cols])))
    out = []
    for i, (policy, o) in enumerate(zip(policies, outcomes)):
        accuracy, mean_tokens, mean_samples = float(o.correct.mean(dtype=float)), float(o.tokens.mean()), float(
            o.samples.mean(dtype=float))
        k = min(policy.n_max, len(curve.n)) - 1
        bon_acc, bon_tok, bon_smp = float(curve.accuracy[k]), float(curve.mean_tokens[k]), float(curve.mean_samples[k])
        same = curve.accuracy_at_tokens(mean_tokens)
        best_n, best_acc = curve.best_within_tokens(mean_tokens)
        env = baseline.at(policy.n_max, mean_tokens)
        gain = accuracy - env["envelope_accuracy_same_tokens"]
        g_lo, g_hi = (float("nan"), float("nan")) if math.isnan(gain) else (float(gains[0, i]), float(gains[1, i]))
        stats = PolicyStats(
            policy=policy.name, label=policy.describe(), n_max=policy.n_max, accuracy=accuracy,
            ci_low=float(lo[i]), ci_high=float(hi[i]), mean_samples=mean_samples, mean_tokens=mean_tokens,
            bon_accuracy=bon_acc, bon_tokens=bon_tok,
            token_savings=1.0 - mean_tokens / bon_tok if bon_tok > 0 else 0.0,
            sample_savings=1.0 - mean_samples / bon_smp,
            bon_accuracy_same_tokens=same, gain_vs_bon_curve=accuracy - same,
            best_fixed_n=best_n, best_fixed_accuracy=best_acc, problems=o.correct.size, orders=o.orders,
            settings=_settings(policy), gain_vs_envelope=gain, gain_vs_envelope_ci_low=g_lo,
            gain_vs_envelope_ci_high=g_hi, beats_envelope=bool(g_lo > 0), **env,
            token_share_of_envelope_best=(mean_tokens / env["envelope_best_tokens"]
                                          if env["envelope_best_tokens"] > 0 else float("nan")),
            **({} if calibration is None else {
                "calibrated_envelope_accuracy_same_tokens": float(tuned[0, i]),
                "gain_vs_calibrated_envelope": accuracy - float(tuned[0, i]),
                "gain_vs_calibrated_envelope_ci_low": float(tuned[1, i]),
                "gain_vs_calibrated_envelope_ci_high": float(tuned[2, i])}),
        )
        if o.hits is not None:
            orders = o.orders * o.correct.size
            uncapped = float(orders - o.capped.sum(dtype=float))
            stats.promised_alpha = float(policy.alpha)
            stats.achieved = float(o.hits.sum(dtype=float)) / orders
            stats.achieved_uncapped = float(o.hits_uncapped.sum(dtype=float)) / uncapped if uncapped > 0 else None
            stats.capped_share = float(o.capped.sum(dtype=float)) / orders
            if stats.achieved_uncapped is not None:
                lo_a, hi_a = _ratio_interval(o.hits_uncapped, o.orders - o.capped, seed=i)
                stats.achieved_ci_low, stats.achieved_ci_high = lo_a, hi_a
                stats.misses_alpha = bool(hi_a < stats.promised_alpha)
        out.append(stats)
    return out


def _intervals(gains: np.ndarray) -> np.ndarray:
    """95% intervals ``(2, G)`` of resampled gains ``(B, G)`` over their finite resamples (NaN: none)."""
    out = np.full((2, gains.shape[1]), np.nan)
    for c in range(gains.shape[1]):
        finite = gains[:, c][np.isfinite(gains[:, c])]
        if finite.size:
            out[:, c] = np.quantile(finite, [0.025, 0.975])
    return out


#: Resamples of :func:`_ratio_interval` drawn at once (the same draws as all at once, in less memory).
_RATIO_STEP = 64


def _ratio_interval(hits: np.ndarray, trials: np.ndarray, resamples: int = 1000, seed: int = 0,
                    level: float = 0.95) -> tuple[float, float]:
    """Bootstrap interval over problems of ``sum(hits) / sum(trials)`` (orders of one problem move together)."""
    hits, trials = np.asarray(hits, dtype=float), np.asarray(trials, dtype=float)
    rng, shares = np.random.default_rng(seed), np.full(hits.size, 1.0 / hits.size)
    num, den = np.empty(resamples), np.empty(resamples)
    for start in range(0, resamples, _RATIO_STEP):  # a few rows of weights at a time: (resamples, P) is large
        weights = rng.multinomial(hits.size, shares, min(_RATIO_STEP, resamples - start))
        num[start:start + len(weights)], den[start:start + len(weights)] = weights @ hits, weights @ trials
    ratio = np.divide(num, den, out=np.full(resamples, np.nan), where=den > 0)
    ratio = ratio[~np.isnan(ratio)]
    if ratio.size == 0:
        return float("nan"), float("nan")
    tail = 100 * (1 - level) / 2
    return float(np.percentile(ratio, tail)), float(np.percentile(ratio, 100 - tail))


def baseline_of(batch: ReplayBatch, bootstrap: int = 2000, seed: int = 0) -> Baseline:
    """The baseline of a whole batch, computed once per batch (kept in its cache)."""
    key = ("baseline", int(bootstrap), int(seed))
    if key not in batch.cache:
        batch.cache[key] = Baseline(fixed_curves(batch), bootstrap, seed)
    return batch.cache[key]


def evaluate(
    batch: ReplayBatch,
    decisions: ReplayDecisions,
    policy,
    curve: BonCurve | None = None,
    bootstrap: int = 2000,
    seed: int = 0,
) -> PolicyStats:
    """Score a policy's decisions on ``batch`` against the fixed-N methods of the same batch."""
    baseline = baseline_of(batch, bootstrap, seed)
    return policy_stats([policy], [outcome_of(batch, decisions, policy)], baseline, curve)[0]


def _settings(policy) -> dict:
    out = {}
    for key, value in policy.model_dump(exclude={"n_max", "priors"}).items():
        out[key] = getattr(value, "value", value)
    if getattr(policy, "priors", None) is not None:
        out["priors"] = str(policy.priors)
    return out


def renamed(name: str, stacklevel: int = 2):
    """A name this module had before (with a deprecation warning); AttributeError for any other."""
    if name == "Outcome":  # the old name, taken by optscale.policies.Outcome (one live episode's result)
        import warnings

        warnings.warn("optscale.replay.Outcome is renamed ReplayOutcome (optscale.policies.Outcome is a live "
                      "episode's result)", DeprecationWarning, stacklevel=stacklevel + 1)
        return ReplayOutcome
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __getattr__(name: str):
    return renamed(name)
