"""Pandora's-box stopping: sample while one more sample is expected to improve the best score by more than it costs.

Source: Weitzman (1979), "Optimal search for the best alternative"; applied to Best-of-N
sampling by Kalayci, Raman & Dughmi (2025), "Optimal Stopping vs Best-of-N for Inference
Time Optimization", arXiv 2510.01394. With the scores of one problem i.i.d. from a known
distribution and a cost ``c`` per sample, the optimal rule stops as soon as the best score
``b`` reaches the reservation value ``tau`` with ``E[(X - tau)^+] = c``; equivalently, it
stops at the first ``n`` with::

    EI(b_n) = E[max(b_n, X)] - b_n = integral_{b_n}^1 (1 - F(x)) dx  <  c

Here ``F`` is OptScale's truncated normal ``TN(mu, sigma)`` on [0, 1], fitted after a peek of
``peek`` samples by maximum likelihood or by MAP toward a population prior (with ``refit``,
again after every later sample), and ``EI`` is the closed form of
:func:`optscale.stats.improvement.expected_improvement`. Kalayci et al. replace the unknown
distribution by an upper confidence bound on ``tau``; this policy plugs in the fitted
distribution instead (their "learn on the fly" idea, with OptScale's estimator).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from ..fit import MU_BOUNDS, SIGMA_BOUNDS, FitResult, fit_stats
from ..stats.improvement import expected_improvement
from .common import PolicyBase, prefix_stats, stops_after_peek
from .registry import register_policy
from .episode import Step

__all__ = ["Pandora"]


@register_policy
class Pandora(PolicyBase):
    """Pandora's box (Weitzman; Kalayci et al. 2025): stop once the expected improvement of the best score is below ``cost``."""

    name: ClassVar[str] = "pandora"
    label: ClassVar[str] = "Pandora's box"  # row name in report tables
    cost: float = Field(0.001, gt=0, lt=1, description="price of one more sample in score units: stop once "
                                                       "E[max(best, X)] - best falls below it")
    estimator: Literal["mle", "map"] = Field("mle", description="mle: maximum likelihood; map: MAP toward the "
                                                               "population prior prior_mu, prior_sigma, prior_width")
    peek: int = Field(3, ge=2, description="samples drawn before the first fit and the first stopping decision "
                                           "(one score does not identify sigma)")
    refit: bool = Field(False, description="refit (mu, sigma) after every sample (true; ~20x slower replay) or "
                                             "fit once after the peek (false)")
    prior_mu: float = Field(1.0, ge=MU_BOUNDS[0], le=MU_BOUNDS[1],
                            description="MAP prior centre of mu (the untruncated mean); the packaged MATH "
                                        "population has most problems at mu >= 1")
    prior_sigma: float = Field(0.2, ge=SIGMA_BOUNDS[0], le=SIGMA_BOUNDS[1],
                               description="MAP prior centre of sigma (the packaged population's median is 0.18)")
    prior_width: float = Field(0.3, gt=0, le=10, description="MAP prior standard deviation on both mu and sigma "
                                                             "(smaller: trust the population more)")

    def peek_size(self) -> int:
        return min(self.peek, self.n_max)

    def initial_plan(self) -> int:
        return self.peek_size()

    def _prior(self):
        return None if self.estimator == "mle" else (self.prior_mu, self.prior_sigma, self.prior_width, self.prior_width)

    def _fit(self, score: np.ndarray, n: np.ndarray) -> FitResult:
        return fit_stats(prefix_stats(score, n), self._prior())

    def _fit_size(self, n):
        """Samples the estimate at ``n`` samples is fitted on."""
        return n if self.refit else np.minimum(n, self.peek_size())

    # -- live ----------------------------------------------------------------------------
    def decide(self, episode) -> Step:
        peek, n = self.peek_size(), episode.n
        if n < peek:
            return Step(False, peek)
        state = episode.context
        m = int(self._fit_size(n))
        if state.get("fitted_on") != m:
            score, _ = episode.arrays()
            state["fit"], state["fitted_on"] = self._fit(score, np.array([m])), m
        fit = state["fit"]
        best = np.array([max(episode.scores)])
        gain = expected_improvement(best, fit.mu, fit.sigma)
        estimates = {"mu": fit.mu[0].item(), "sigma": fit.sigma[0].item(), "fit_flag": fit.flag[0].item(),
                     "improvement": gain[0].item()}
        stop = bool(gain[0] < self.cost)
        return Step(stop, n if stop else n + 1, "improvement" if stop else "", estimates)

    # -- replay --------------------------------------------------------------------------
    def _table(self, batch) -> dict[str, np.ndarray]:
        """Expected improvement and the fit at every decision point ``n = peek..W`` of every row.

        It does not depend on ``cost``, so a sweep over costs computes it once per batch.
        """
        peek = self.peek_size()
        score = batch.flat("score")
        width = min(self.n_max, score.shape[1])
        key = ("pandora", self._prior(), self.refit, peek, width)
        if key in batch.cache:
            return batch.cache[key]
        available = batch.flat_available()
        best = np.maximum.accumulate(score[:, :width], axis=1)
        cols = max(width - peek + 1, 0)
        out = {k: np.zeros((score.shape[0], cols), dtype=d) for k, d in
               (("ei", float), ("mu", float), ("sigma", float), ("fit_flag", np.int64))}
        fit = None
        for j, n in enumerate(range(peek, width + 1)):
            if fit is None or self.refit:
                fit = self._fit(score, np.minimum(self._fit_size(n), available))
            out["ei"][:, j] = expected_improvement(best[:, n - 1], fit.mu, fit.sigma)
            out["mu"][:, j], out["sigma"][:, j], out["fit_flag"][:, j] = fit.mu, fit.sigma, fit.flag
        batch.cache[key] = out
        return out

    def replay_stops(self, batch):
        peek = self.peek_size()
        table = self._table(batch)
        rows, cols = table["ei"].shape
        if cols == 0:  # fewer stored samples than the peek: every row uses all it has
            return np.full(rows, self.n_max), {}
        # Estimates at the last decision the row made (its stop, or its last sample).
        n_used, last = stops_after_peek(table["ei"] < self.cost, peek, batch.flat_available(), self.n_max)
        estimates = {k: table[k][np.arange(rows), last] for k in ("mu", "sigma", "fit_flag")}
        return n_used, estimates
