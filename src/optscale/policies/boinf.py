"""Best-of-infinity stopping: sample until the majority answer is, with Bayes factor ``bf``, the mode.

Source: Komiyama, Oba and Oyamada, "Best-of-infinity: asymptotic performance of test-time
compute" (ICLR 2026, arXiv 2509.21091), adaptive sampling; reference code
github.com/jkomiyama/BoInf-code-publish (``boinf/test_main.py``, ``calculate_bayes_factor_mc``),
which this follows in its definitions and computes exactly instead of by Monte Carlo.

After each sample, with ``c_1 > c_2 >= ... >= c_m`` the counts of the ``m`` distinct answers seen
so far ("no answer" is not counted) and one more bucket for every answer not yet seen, holding
the pseudo-count ``alpha`` (the reference's 0.3), the answer shares have the posterior

    p ~ Dirichlet(c_1 + 1, ..., c_m + 1, alpha + 1)       (a uniform Dirichlet prior, K = m + 1)

and with ``P = Pr(p_1 = max_j p_j | data)``, the posterior probability that the current majority
is the population mode (the answer Best-of-infinity returns), the Bayes factor is

    BF = K * P / (1 - P)

(the reference's definition: the posterior odds times ``K``; the prior odds of one given bucket
being the mode are ``1 / (K - 1)``). Sampling stops once ``BF >= bf`` and returns the majority.
``P`` is one integral over independent Gamma variables (``p = G / sum G``, ``G_j ~ Gamma(a_j)``):

    1 - P = integral_0^inf g_{a_1}(x) (1 - prod_{j >= 2} G_{a_j}(x)) dx,

``g`` and ``G`` the Gamma density and distribution function, evaluated by the trapezoid rule
on a log-spaced grid (spectrally accurate for this smooth integrand; the tests check it against
the closed form for two buckets and Monte Carlo for more). Departures from the reference: the
Bayes factor is checked after every sample (the reference thins checks above 100 samples), a
tie for the lead never stops (the reference's ``argmax`` picks one of the tied answers), and
before any answer has been seen there is no majority and no stop (the reference stops at once
when its only bucket is the unseen one).

The default ``bf = 25`` was chosen on the shared answer pools (MATH-500 x 4 models and AIME 2024
x 11 models, 80-160 answers each, ``n_max`` = all of them; ``benchmarks/boinf_pools.py --scan``):
the one value of the scanned grid with which, on every pool and for 3 seeds x 8 random orders,
the accuracy stays within one problem of the majority vote over all answers while drawing at
most 25% of them (20-22 lose 1.1 problems on MATH-500/EXAONE, 27 and above draw more than 25%
on AIME/Datarus). In sample: no pool was held out, so treat the margin as thin.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import ClassVar

import numpy as np
from pydantic import Field
from scipy import special

from .common import PolicyBase
from .registry import register_policy
from .episode import Step
from .selection import Selection

__all__ = ["BestOfInfinity", "bayes_factor", "mode_probability_complement"]

#: Largest (rows x width x distinct answers) count array one block of :func:`prefix_counts` builds.
CELLS = 2**24

#: Lower end of the integration grid: below it the leader's density (shape >= 2) holds < 1e-12.
_X_LOW = 1e-6


@lru_cache(maxsize=256)
def _leader_grid(leader: int) -> tuple[np.ndarray, np.ndarray]:
    """The integration grid for a leader seen ``leader`` times (``x``, log-spaced, dense enough for
    its Gamma(leader + 1) density) and the log of that density times the step in ``log x``."""
    a1 = leader + 1.0
    lo, hi = math.log(_X_LOW), math.log(a1 + 12.0 * math.sqrt(a1) + 30.0)
    points = max(256, math.ceil(2.0 * math.sqrt(a1) * (hi - lo)))
    t = np.linspace(lo, hi, points)
    x = np.exp(t)
    log_weight = a1 * t - x - special.gammaln(a1) + math.log(t[1] - t[0])  # x^a1 e^-x / Gamma(a1) dt
    for arr in (x, log_weight):
        arr.setflags(write=False)
    return x, log_weight


@lru_cache(maxsize=8192)
def _log_cdf(leader: int, shape: float) -> np.ndarray:
    """``log G_shape(x)`` on the leader's grid, floored at -1e6 so that a zero multiplicity gives
    exactly 0. Cached row by row: memory stays bounded whatever ``n_max``."""
    x, _ = _leader_grid(leader)
    lower, upper = special.gammainc(shape, x), special.gammaincc(shape, x)
    with np.errstate(divide="ignore"):
        out = np.maximum(np.where(lower < 0.5, np.log(lower), np.log1p(-upper)), -1e6)
    out.setflags(write=False)
    return out


def mode_probability_complement(counts: np.ndarray, alpha: float) -> np.ndarray:
    """``log(1 - P)`` for rows of counts sorted in decreasing order (zeros pad the rows): the log
    posterior probability that the first bucket is *not* the largest share, under
    ``Dirichlet(counts + 1, alpha + 1)`` with the unseen bucket last. Rows with a zero leader
    give 0 (``P = 0``)."""
    counts = np.asarray(counts, dtype=np.int64)
    out = np.zeros(counts.shape[0])
    if counts.size == 0:
        return out
    rest = counts[:, 1:]
    for leader in np.unique(counts[:, 0]):
        if leader <= 0:
            continue
        rows = np.flatnonzero(counts[:, 0] == leader)
        _, log_weight = _leader_grid(int(leader))
        comp = rest[rows]
        # log prod_j G_j: the unseen bucket, then each competitor count value (in decreasing order,
        # the same in live and replay, so both add the same terms in the same order) times its
        # multiplicity (0 adds exactly 0)
        log_prod = np.broadcast_to(_log_cdf(int(leader), float(alpha) + 1.0), (rows.size, log_weight.size)).copy()
        for value in np.unique(comp[comp > 0])[::-1]:
            mult = (comp == value).sum(axis=1).astype(float)
            log_prod += mult[:, None] * _log_cdf(int(leader), float(value) + 1.0)[None, :]
        with np.errstate(divide="ignore"):
            log_f = log_weight[None, :] + np.log(-np.expm1(log_prod))
        peak = log_f.max(axis=1)
        out[rows] = np.minimum(peak + np.log(np.exp(log_f - peak[:, None]).sum(axis=1)), 0.0)
    return out


def bayes_factor(counts: np.ndarray, alpha: float) -> np.ndarray:
    """``BF = K P / (1 - P)`` for rows of answer counts sorted in decreasing order (see the
    module docstring); 0 where no answer leads strictly (nothing seen, or a tie for the lead)."""
    counts = np.asarray(counts, dtype=np.int64)
    if counts.ndim != 2:
        raise ValueError("counts must be a 2-D array of rows sorted in decreasing order")
    if counts.shape[1] == 1:
        counts = np.concatenate([counts, np.zeros_like(counts)], axis=1)
    leads = (counts[:, 0] > 0) & (counts[:, 0] > counts[:, 1])
    log_q = mode_probability_complement(counts, alpha)
    k = (counts > 0).sum(axis=1) + 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        log_bf = np.log(k) + np.log(-np.expm1(log_q)) - log_q
    return np.where(leads, np.exp(log_bf), 0.0)


def prefix_counts(code: np.ndarray) -> np.ndarray:
    """Counts of every answer after each prefix, sorted in decreasing order: ``(B, W, K)``."""
    rows, width = code.shape
    k = max(int(code.max()) + 1 if code.size else 0, 1)
    counts = np.cumsum(code[:, :, None] == np.arange(k)[None, None, :], axis=1, dtype=np.int32)
    return -np.sort(-counts, axis=2)


_HASH = np.random.default_rng(20250925).integers(1, 2**63, size=4096, dtype=np.uint64) | np.uint64(1)


def unique_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct rows and each row's index among them, like ``np.unique(rows, axis=0)`` but through
    a 64-bit hash (a sort of integers, not of byte strings); exact: a collision is detected and
    falls back to ``np.unique``."""
    mult = _HASH[: rows.shape[1]] if rows.shape[1] <= _HASH.size else None
    if mult is not None:
        with np.errstate(over="ignore"):
            key = (rows.astype(np.uint64) * mult[None, :]).sum(axis=1, dtype=np.uint64)
        _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
        states = rows[first]
        if np.array_equal(states[inverse], rows):
            return states, inverse.reshape(-1)
    states, inverse = np.unique(rows, axis=0, return_inverse=True)
    return states, inverse.reshape(-1)


@register_policy
class BestOfInfinity(PolicyBase):
    """Best-of-infinity: stop once the Bayes factor that the majority answer is the mode reaches ``bf``."""

    name: ClassVar[str] = "boinf"
    label: ClassVar[str] = "Best-of-$\\infty$"  # row name in report tables
    needs_scores: ClassVar[bool] = False
    select: Selection = Field(Selection.MAJORITY, description="how the returned sample is chosen (Best-of-infinity: "
                                                             "majority)")
    bf: float = Field(25.0, gt=0, le=1e12, description="Bayes factor that stops sampling; chosen on the shared answer "
                                                       "pools (see docs/policies.md)")
    alpha: float = Field(0.3, ge=0, le=100, description="pseudo-count of the bucket of answers not seen yet (the "
                                                         "reference code's 0.3)")

    def initial_plan(self) -> int:
        return 1

    def decide(self, episode) -> Step:
        votes = np.bincount([c for c in episode.codes if c >= 0], minlength=1)
        counts = -np.sort(-votes)[None, :]
        value = float(bayes_factor(counts, self.alpha)[0])
        if value >= self.bf:
            return Step(True, episode.n, "bayes_factor", {"bayes_factor": value})
        return Step(False, episode.n + 1, "", {"bayes_factor": value})

    def replay_stops(self, batch, chunk: int = 1024):
        width = min(batch.shape[2], self.n_max)
        available = batch.flat_available()
        bf = self._prefix_bayes_factors(batch, width, chunk)
        rows = bf.shape[0]
        pos = np.arange(1, width + 1)[None, :]
        hit = (bf >= self.bf) & (pos <= available[:, None])
        stop = hit.any(axis=1)
        first = hit.argmax(axis=1) + 1
        last = np.minimum(np.where(stop, first, width), available) - 1
        return np.where(stop, first, self.n_max), {"bayes_factor": bf[np.arange(rows), np.maximum(last, 0)]}

    def _prefix_bayes_factors(self, batch, width: int, chunk: int) -> np.ndarray:
        """The Bayes factor after every prefix of every row, ``(P * R, width)``; it does not depend on
        ``bf``, so it is cached in the batch and a sweep over ``bf`` computes it once."""
        key = ("boinf", float(self.alpha), width)
        if key in batch.cache:
            return batch.cache[key]
        code = batch.flat("answer")[:, :width]
        out = np.zeros(code.shape)
        if code.size == 0:
            batch.cache[key] = out
            return out
        # Rows per block: at most `chunk`, fewer where many distinct answers would make the
        # (rows, width, answers) count array exceed CELLS (each row's values do not depend on it).
        kinds = max(int(code.max()) + 1, 1)
        step = max(1, min(chunk, CELLS // (width * kinds)))
        for lo in range(0, code.shape[0], step):
            counts = prefix_counts(code[lo:lo + step])
            b, w, k = counts.shape
            depth = max(int((counts[:, -1, :] > 0).sum(axis=1).max()), 2)
            if k < depth:  # no answer in this block: one all-zero column; a tie of zeros never stops
                counts = np.concatenate([counts, np.zeros((b, w, depth - k), dtype=counts.dtype)], axis=2)
            flat = np.ascontiguousarray(counts[:, :, :depth].reshape(b * w, depth))
            states, inverse = unique_rows(flat)
            out[lo:lo + step] = bayes_factor(states, self.alpha)[inverse].reshape(b, w)
        batch.cache[key] = out
        return out
