"""OptScale: sample until the best score beats ``s_min`` with probability ``alpha``.

* ``optscale0`` (OptScale^0): peek ``peek`` samples, fit (mu, sigma) by maximum likelihood,
  then draw ``N = min(n_max, max(peek, N*))`` in total.
* ``optscale-t`` (OptScale^t): the same with a MAP fit under per-problem priors from a file, a
  predictor, or any :class:`~optscale.priors.PriorSource`. The policy never loads a predictor
  itself: :func:`optscale.compose.build_policy` (used by the CLI, the live runner and the demo)
  plugs in the packaged default predictor when no priors are given.
* ``optscale`` (the paper's sequential algorithm): re-estimate after every sample from the
  ``peek``-th on and stop as soon as ``n >= N*``.
"""

from __future__ import annotations

import hashlib
import math
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, ValidationInfo, field_validator

from .. import defaults
from ..errors import InputError
from ..fit import FitResult, fit_stats
from ..stats import min_samples_detail
from .common import PolicyBase, prefix_stats
from .registry import register_policy
from .episode import Step
from ..priors import POPULATION, FilePriors, PriorArrays, PriorSource

__all__ = ["DEFAULT_TARGET", "OptScale0", "OptScaleT", "SequentialOptScale", "paper_peek"]


def paper_peek(n_max: int) -> int:
    """Peek size of the paper for a budget: 3, 5, 10, 20 for N_max 8, 16, 32, 64 (ceil(0.3 N))."""
    return max(1, min(n_max, math.ceil(0.3 * n_max - 1e-9)))


@lru_cache(maxsize=16)
def _file_priors(path: str, mtime: float) -> FilePriors:
    return FilePriors(path)


class _OptScaleBase(PolicyBase):
    s_min: float = Field(defaults.S_MIN, gt=0, lt=1, description="target verifier score the best sample should reach")
    alpha: float = Field(defaults.ALPHA, gt=0, lt=1, description="required probability that the best sample reaches s_min")
    peek: int | None = Field(None, ge=1, description="samples drawn before the first estimate")
    over_budget: Literal["spend", "stop"] = Field(
        "spend", description="when N* exceeds n_max: spend the whole budget (the paper) or stop after the peek"
    )
    estimator: Literal["mle", "map"] = "mle"
    priors: Any = Field(None, description="MAP priors: a priors JSONL path, 'population' (an empirical-Bayes prior "
                                          "fitted on calibration problems; 'population:POOL' names a calibration "
                                          "pool) or a PriorSource; the CLI's default: the packaged predictor")
    prior_width: float | None = Field(None, gt=0, description="override the prior widths (std on mu and sigma)")

    @field_validator("priors")
    @classmethod
    def _check_priors(cls, value):
        if value is None or isinstance(value, (str, Path)) or isinstance(value, PriorSource):
            return value
        raise ValueError("priors must be a file path or an object with a priors(ids, questions) method")

    @field_validator("priors", "prior_width")
    @classmethod
    def _only_for_map(cls, value, info: ValidationInfo):
        """Priors given to a maximum-likelihood fit would be silently ignored."""
        if value is not None and info.data.get("estimator") == "mle":
            raise ValueError(f"only a MAP estimate reads {info.field_name} and policy {cls.name!r} makes a "
                             "maximum-likelihood one: use optscale-t, or optscale with estimator=map")
        return value

    # -- shared machinery ----------------------------------------------------------------
    def peek_size(self) -> int:
        return min(self.n_max, self.peek if self.peek is not None else paper_peek(self.n_max))

    def prior_source(self) -> PriorSource:
        if isinstance(self.priors, str) and (self.priors == POPULATION or self.priors.startswith(POPULATION + ":")):
            raise InputError("a population prior is fitted on calibration problems: sweep fits one on its "
                             "calibration split; elsewhere name a calibration pool, priors=population:POOL "
                             "(optscale.compose.build_policy fits it), or pass a fitted optscale.priors.PopulationPriors",
                             "settings.priors")
        if isinstance(self.priors, (str, Path)):
            path = Path(self.priors)
            if not path.exists():
                raise InputError("priors file not found", str(path))
            return _file_priors(str(path), path.stat().st_mtime)
        if self.priors is None:
            raise InputError("a MAP estimate needs priors: pass a priors JSONL path or a PriorSource, or build "
                             "the policy with optscale.compose.build_policy, which uses the packaged default "
                             "predictor", "settings.priors")
        return self.priors

    def prior_arrays(self, ids, questions, meta=None) -> PriorArrays | None:
        """Priors of the problems (None for an MLE); ``meta``: their ``level``/``subject``, as a predictor uses."""
        if self.estimator == "mle":
            return None
        meta = list(meta) if meta else [None] * len(ids)
        return self.prior_source().priors(list(ids), list(questions), meta).override_width(self.prior_width)

    def episode_context(self, problem) -> dict:
        if self.estimator == "mle":
            return {"prior": None}
        if problem.prior is not None:
            p = problem.prior
            arr = PriorArrays(*(np.array([v], dtype=float) for v in (p.mu, p.sigma, p.width_mu, p.width_sigma)))
            return {"prior": arr.override_width(self.prior_width)}
        return {"prior": self.prior_arrays([problem.id], [problem.question], [problem.meta])}

    def _fit(self, score: np.ndarray, n: np.ndarray, prior: PriorArrays | None) -> FitResult:
        stats = prefix_stats(score, n)
        if prior is None:
            return fit_stats(stats)
        return fit_stats(stats, (prior.mu, prior.sigma, prior.width_mu, prior.width_sigma))

    def _target(self, fit: FitResult) -> tuple[np.ndarray, np.ndarray]:
        """N* capped at n_max, and where it had to be capped."""
        return min_samples_detail(fit.mu, fit.sigma, self.s_min, self.alpha, self.n_max)

    def _estimates(self, fit: FitResult, n_star, capped) -> dict[str, np.ndarray]:
        return {"mu": fit.mu, "sigma": fit.sigma, "n_star": n_star, "capped": capped, "fit_flag": fit.flag}

    def _batch_priors(self, batch) -> tuple[PriorArrays | None, str]:
        """Priors repeated over orders, and a key that identifies them in the batch cache."""
        prior = self.prior_arrays(batch.ids, batch.questions, batch.meta)
        if prior is None:
            return None, "mle"
        r = batch.shape[1]
        rep = PriorArrays(*(np.repeat(a, r) for a in (prior.mu, prior.sigma, prior.width_mu, prior.width_sigma)))
        digest = hashlib.sha1(b"".join(np.ascontiguousarray(a).tobytes() for a in
                                       (prior.mu, prior.sigma, prior.width_mu, prior.width_sigma))).hexdigest()
        return rep, "map:" + digest

    def _batch_fit(self, batch, n: np.ndarray, prior, key: str) -> FitResult:
        """Fits on the first ``n`` samples of every row, cached across settings of one batch."""
        cache_key = ("fit", key, n.tobytes())
        if cache_key not in batch.cache:
            batch.cache[cache_key] = self._fit(batch.flat("score"), n, prior)
        return batch.cache[cache_key]

    @staticmethod
    def _single(values: dict) -> dict:
        return {k: (v[0].item() if isinstance(v, np.ndarray) else v) for k, v in values.items()}


#: OptScale's default target ``(s_min, alpha)`` (:mod:`optscale.defaults`); reports and ``optscale nstar``
#: show the same numbers.
DEFAULT_TARGET: tuple[float, float] = (defaults.S_MIN, defaults.ALPHA)


class _PeekOptScale(_OptScaleBase):
    """Peek, estimate once, then commit to a total budget."""

    def initial_plan(self) -> int:
        return self.peek_size()

    def _total(self, n_star, capped, peek):
        total = np.maximum(peek, n_star)
        if self.over_budget == "stop":
            total = np.where(capped, peek, total)
        return total

    def decide(self, episode) -> Step:
        peek = self.peek_size()
        state = episode.context
        if episode.n < peek:
            return Step(False, peek)
        if "total" not in state:
            score, _ = episode.arrays()
            fit = self._fit(score, np.array([episode.n]), state["prior"])
            n_star, capped = self._target(fit)
            state["total"] = int(self._total(n_star, capped, peek)[0])
            state["estimates"] = self._single(self._estimates(fit, n_star, capped))
            state["reason"] = "over_budget" if bool(capped[0]) else "n_star"
        total = state["total"]
        return Step(episode.n >= total, total, state["reason"], state["estimates"])

    def replay_stops(self, batch):
        peek = self.peek_size()
        prior, key = self._batch_priors(batch)
        n = np.minimum(peek, batch.flat_available())
        fit = self._batch_fit(batch, n, prior, key)
        n_star, capped = self._target(fit)
        return self._total(n_star, capped, peek), self._estimates(fit, n_star, capped)


@register_policy
class OptScale0(_PeekOptScale):
    """OptScale^0: maximum-likelihood estimate from the peek samples, no training."""

    name: ClassVar[str] = "optscale0"
    label: ClassVar[str] = "OptScale$^0$ (MLE)"  # row name in report tables
    estimator: Literal["mle"] = "mle"


@register_policy
class OptScaleT(_PeekOptScale):
    """OptScale^t: MAP estimate from the peek samples under per-problem priors."""

    name: ClassVar[str] = "optscale-t"
    label: ClassVar[str] = "OptScale$^t$ (MAP)"  # row name in report tables
    estimator: Literal["map"] = "map"


@register_policy
class SequentialOptScale(_OptScaleBase):
    """The paper's sequential rule: refit after every sample, stop once ``n >= N*``."""

    name: ClassVar[str] = "optscale"
    label: ClassVar[str] = "OptScale (sequential)"  # row name in report tables
    peek: int | None = Field(3, ge=1, description="samples drawn before the first estimate")

    def initial_plan(self) -> int:
        return self.peek_size()

    def decide(self, episode) -> Step:
        peek = self.peek_size()
        if episode.n < peek:
            return Step(False, peek)
        score, _ = episode.arrays()
        fit = self._fit(score, np.array([episode.n]), episode.context["prior"])
        n_star, capped = self._target(fit)
        estimates = self._single(self._estimates(fit, n_star, capped))
        if self.over_budget == "stop" and capped[0]:
            return Step(True, episode.n, "over_budget", estimates)
        stop = episode.n >= n_star[0]
        return Step(stop, int(max(n_star[0], episode.n + 1)), "n_star", estimates)

    def replay_stops(self, batch):
        peek = self.peek_size()
        available = batch.flat_available()
        prior, key = self._batch_priors(batch)
        rows = available.size
        n_used = np.minimum(self.n_max, available)
        decided = np.zeros(rows, dtype=bool)
        est = {k: np.zeros(rows, dtype=d) for k, d in
               (("mu", float), ("sigma", float), ("n_star", np.int64), ("capped", bool), ("fit_flag", np.int64))}
        for n in range(peek, self.n_max + 1):
            live = ~decided & (available >= n)
            if not live.any():
                break
            fit = self._batch_fit(batch, np.minimum(n, available), prior, key)
            n_star, capped = self._target(fit)
            for k, v in self._estimates(fit, n_star, capped).items():
                est[k] = np.where(live, v, est[k])
            stop = live & ((n >= n_star) | (capped if self.over_budget == "stop" else False))
            n_used = np.where(stop, n, n_used)
            decided |= stop
        return n_used, est
