"""Where OptScale^t gets its per-problem priors: the protocol, a file, a constant, a population.

This module sits below both :mod:`optscale.policies` (which consumes priors) and
:mod:`optscale.predictor` (which produces them), so neither needs the other; the application
layer (:mod:`optscale.compose`) plugs the packaged predictor into OptScale^t.

Priors live in the space of the truncated normal's *parameters*. Sources that know only
score moments (mean and std of the scores, as predictors are trained on) are converted by
moment matching (:func:`optscale.fit.moments_to_params`); using moments as parameters
directly is a known flaw of the original research code.

Sources get each problem's id, question text and metadata (``level``, ``subject``: the pool's
fields in :data:`META_KEYS`), so a predictor sees exactly what ``optscale predictor predict``
sees in a benchmark file. :class:`PopulationPriors` needs none of it: one empirical-Bayes prior
fitted on calibration problems' scores.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

from .checks import check_number
from .errors import InputError
from .fit import FitFlag, SufficientStats, fit_stats, moments_to_params
from .io import iter_objects

__all__ = ["META_KEYS", "POPULATION", "PriorArrays", "PriorSource", "ConstantPriors", "FilePriors", "PopulationPriors",
           "check_unseen", "priors_from_moments", "problem_key", "problem_keys"]

#: Problem metadata handed to prior sources (``Problem.meta``, ``ReplayBatch.meta``), as in benchmark files.
META_KEYS = ("level", "subject")
#: The ``priors`` setting that asks for a population prior fitted on calibration problems.
POPULATION = "population"

Meta = Sequence[Mapping[str, Any] | None] | None


@dataclass(frozen=True)
class PriorArrays:
    """Per-problem prior centres and widths on ``(mu, sigma)``, aligned with the ids asked for."""

    mu: np.ndarray
    sigma: np.ndarray
    width_mu: np.ndarray
    width_sigma: np.ndarray

    def override_width(self, width: float | tuple[float, float] | None) -> "PriorArrays":
        """The same centres with fixed widths (a user's ``prior_width`` setting)."""
        if width is None:
            return self
        wm, ws = (width, width) if np.isscalar(width) else width
        return PriorArrays(self.mu, self.sigma, np.full_like(self.mu, wm), np.full_like(self.mu, ws))


@runtime_checkable
class PriorSource(Protocol):
    """Anything that yields priors for problems given their ids, question texts and, optionally,
    metadata (one mapping or None per problem, keys from :data:`META_KEYS`)."""

    def priors(self, ids: Sequence[str], questions: Sequence[str | None], meta: Meta = None) -> PriorArrays: ...


def priors_from_moments(mean, std, width_mu, width_sigma) -> PriorArrays:
    """Convert predicted score moments to parameter priors by moment matching."""
    fit = moments_to_params(np.clip(mean, 0.0, 1.0), np.clip(std, 0.0, 0.5))
    shape = fit.mu.shape
    return PriorArrays(
        fit.mu, fit.sigma, np.broadcast_to(np.asarray(width_mu, float), shape).copy(),
        np.broadcast_to(np.asarray(width_sigma, float), shape).copy(),
    )


@dataclass(frozen=True)
class ConstantPriors:
    """The same prior for every problem (e.g. the training-set average)."""

    mu: float
    sigma: float
    width_mu: float = 0.1
    width_sigma: float = 0.1

    def priors(self, ids, questions, meta: Meta = None) -> PriorArrays:
        n = len(ids)
        return PriorArrays(np.full(n, self.mu), np.full(n, self.sigma), np.full(n, self.width_mu), np.full(n, self.width_sigma))


class FilePriors:
    """Priors from a JSON Lines file keyed by ``id``.

    Each line holds either parameters (``mu``, ``sigma``, optionally ``width_mu`` and
    ``width_sigma``), or score moments (``score_mean``/``score_std``, as written by
    ``optscale predictor predict``, or ``prior_mean``/``prior_std``, as in the paper's
    published predictor output), which are moment-matched to parameters.
    """

    def __init__(self, path: str | Path, width: float = 0.1):
        self.path = Path(path)
        self.width = float(width)
        self._rows: dict[str, tuple[float, float, float, float]] = {}
        #: Lines whose values were repaired rather than rejected (negative stds), for reports.
        self.repairs: list[str] = []
        self._load()

    def _load(self) -> None:
        moments: list[tuple[str, float, float, float, float]] = []
        seen: set[str] = set()
        for where, row in iter_objects(self.path, require=("id",)):
            key = str(row["id"])
            if key in seen:
                raise InputError(f"duplicate id {key!r}", where)
            seen.add(key)
            wm = _number(row.get("width_mu", self.width), where, "width_mu")
            ws = _number(row.get("width_sigma", self.width), where, "width_sigma")
            if "mu" in row and "sigma" in row:
                mu = _number(row["mu"], where, "mu")
                sigma = _number(row["sigma"], where, "sigma")
                if sigma <= 0:
                    raise InputError("sigma must be positive", f"{where} field sigma")
                self._rows[key] = (mu, sigma, wm, ws)
                continue
            for mean_key, std_key in (("score_mean", "score_std"), ("prior_mean", "prior_std")):
                if mean_key in row and std_key in row:
                    mean = _number(row[mean_key], where, mean_key)
                    std = _number(row[std_key], where, std_key)
                    if not (0 <= mean <= 1):
                        raise InputError(f"{mean_key} must lie in [0, 1], got {mean!r}", where)
                    if std < 0:
                        # The paper's published predictor emits a few negative stds.
                        self.repairs.append(f"{where}: {std_key} {std!r} < 0 clipped to 0")
                        std = 0.0
                    moments.append((key, mean, std, wm, ws))
                    break
            else:
                raise InputError("needs mu and sigma, score_mean and score_std, or prior_mean and prior_std", where)
        if not seen:
            raise InputError("holds no priors (the file is empty)", str(self.path))
        if moments:
            keys = [m[0] for m in moments]
            conv = priors_from_moments([m[1] for m in moments], [m[2] for m in moments],
                                       [m[3] for m in moments], [m[4] for m in moments])
            for i, key in enumerate(keys):
                self._rows[key] = (float(conv.mu[i]), float(conv.sigma[i]), float(conv.width_mu[i]), float(conv.width_sigma[i]))

    def __len__(self) -> int:
        return len(self._rows)

    def priors(self, ids, questions, meta: Meta = None) -> PriorArrays:
        missing = [i for i in ids if i not in self._rows]
        if missing:
            raise InputError(f"no prior for {len(missing)} problem(s), e.g. id {missing[0]!r}", str(self.path))
        rows = np.array([self._rows[i] for i in ids], dtype=float).reshape(-1, 4)
        return PriorArrays(rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3])


@dataclass(frozen=True)
class PopulationPriors:
    """An empirical-Bayes population prior: one ``(mu, sigma)`` prior for every problem.

    Fitted on calibration problems' scores, no question text needed (Robbins' empirical Bayes;
    Efron & Morris 1973). Each calibration problem's ``(mu, sigma)`` is estimated by maximum
    likelihood from all its scores; the prior's centre is the median of those estimates and its
    width their robust spread, ``1.4826 x MAD`` (a method-of-moments fit that one runaway fit
    cannot move), floored at ``min_width``. The spread includes the estimates' own sampling
    noise, so the prior is if anything too wide: it leans toward the data, never away from it.
    Problems with fewer than two scores or with no spread (``SINGLE``, ``ZERO_SPREAD`` fits)
    identify no spread and are left out.

    ``fitted_on`` holds the calibration problems as :func:`problem_keys` (short hashes of their
    ``(id, question)`` pairs); with ``strict``
    (the default), asking for priors of any of them raises :class:`InputError`, so a report can
    never be computed on the problems the prior was fitted on (the pair, not the id alone, so
    that two pools that merely reuse ids, such as two simulated pools, are told apart) (sweep fits one per calibration split with ``strict=False`` and
    evaluates it on both halves, choosing settings on the calibration half only).
    """

    mu: float
    sigma: float
    width_mu: float
    width_sigma: float
    problems: int
    fitted_on: frozenset[str] = field(default=frozenset(), repr=False)
    strict: bool = True

    #: Fewest usable calibration problems for a fit.
    MIN_PROBLEMS = 5

    @classmethod
    def fit(cls, scores: Sequence[Sequence[float]], ids: Sequence[str] = (), questions: Sequence[str | None] = (), *,
            min_width: float = 0.01, strict: bool = True, where: str = "settings.priors") -> "PopulationPriors":
        """Fit on the scores of calibration problems (one sequence per problem, ragged allowed);
        ``ids`` and ``questions`` name them for the leak check."""
        rows = [np.asarray(s, dtype=float).ravel() for s in scores]
        if any(np.isnan(r).any() for r in rows):
            raise InputError("a population prior is fitted on scores, and the calibration samples have none", where)
        stats = SufficientStats.from_samples(rows) if rows else SufficientStats(*(np.zeros(0),) * 3)
        result = fit_stats(stats) if rows else None
        usable = (stats.n >= 2) & (stats.var > 1e-24)
        if result is not None:
            usable &= (result.flag & (FitFlag.SINGLE | FitFlag.ZERO_SPREAD | FitFlag.EMPTY)) == 0
        count = int(usable.sum())
        if count < cls.MIN_PROBLEMS:
            raise InputError(f"a population prior needs at least {cls.MIN_PROBLEMS} calibration problems with two "
                             f"or more distinct scores, got {count} of {len(rows)}", where)
        mu, sigma = result.mu[usable], result.sigma[usable]
        centre = (float(np.median(mu)), float(np.median(sigma)))
        spread = [max(min_width, 1.4826 * float(np.median(np.abs(x - c)))) for x, c in zip((mu, sigma), centre)]
        questions = list(questions) or [None] * len(ids)
        return cls(centre[0], centre[1], spread[0], spread[1], count, problem_keys(ids, questions), strict)

    @classmethod
    def from_batch(cls, batch, **kwargs) -> "PopulationPriors":
        """Fit on a replay batch's calibration problems: every available score, in pool order."""
        if not getattr(batch, "has_scores", True):
            raise InputError(f"a population prior is fitted on scores, and {batch.source} has none",
                             kwargs.get("where", "settings.priors"))
        first = batch.score[:, 0, :]
        return cls.fit([first[i, : batch.available[i]] for i in range(first.shape[0])], batch.ids, batch.questions,
                       **kwargs)

    def __str__(self) -> str:
        return (f"population(mu={self.mu:.3f}±{self.width_mu:.3f}, sigma={self.sigma:.3f}±{self.width_sigma:.3f}, "
                f"{self.problems} problems)")

    def priors(self, ids, questions, meta: Meta = None) -> PriorArrays:
        if self.strict:
            check_unseen(self.fitted_on, ids, questions, "the population prior", "settings.priors",
                         "report on other problems than those it was fitted on")
        return ConstantPriors(self.mu, self.sigma, self.width_mu, self.width_sigma).priors(ids, questions)


# -- the leak check shared by every estimate fitted on calibration problems ------------------------
#: Hex digits kept of a problem key's sha256 (64 bits: a false overlap between 10^4 calibration and
#: 10^6 reported problems has probability about 5e-10).
KEY_CHARS = 16


def problem_key(problem_id, question: str | None) -> str:
    """A problem's identity for leak checks: the first :data:`KEY_CHARS` hex digits of the sha256
    of the JSON pair ``[id, question]``. The pair, not the id alone, so that two pools that merely
    reuse ids (such as two simulated pools) are told apart."""
    text = json.dumps([str(problem_id), question], ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:KEY_CHARS]


def problem_keys(ids: Sequence[str], questions: Sequence[str | None]) -> frozenset[str]:
    """:func:`problem_key` of every problem (``questions`` may be empty: no question texts)."""
    questions = list(questions) or [None] * len(ids)
    return frozenset(problem_key(i, q) for i, q in zip(ids, questions))


def check_unseen(fitted_on: frozenset[str] | set[str], ids: Sequence[str], questions: Sequence[str | None],
                 what: str, where: str, remedy: str) -> None:
    """Refuse (:class:`InputError` at ``where``) to apply ``what``, fitted on the problems whose
    :func:`problem_keys` are ``fitted_on``, to any of those problems: a report on them would
    measure the fit's in-sample optimism. ``remedy`` tells the user what to do instead."""
    if not fitted_on:
        return
    questions = list(questions) or [None] * len(ids)
    leaked = [str(i) for i, q in zip(ids, questions) if problem_key(i, q) in fitted_on]
    if leaked:
        raise InputError(f"{len(leaked)} of {len(ids)} problem(s) were in the calibration data of {what}, e.g. id "
                         f"{leaked[0]!r}: {remedy}", where)


def _number(value, where: str, field: str) -> float:
    return check_number(value, f"{where} field {field}")
