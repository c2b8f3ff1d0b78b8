"""Where OptScale^t gets its per-problem priors: the protocol, a file, a constant.

This module sits below both :mod:`optscale.policies` (which consumes priors) and
:mod:`optscale.predictor` (which produces them), so neither needs the other; the application
layer (:mod:`optscale.compose`) plugs the packaged predictor into OptScale^t.

Priors live in the space of the truncated normal's *parameters*. Sources that know only
score moments (mean and std of the scores, as predictors are trained on) are converted by
moment matching (:func:`optscale.fit.moments_to_params`); using moments as parameters
directly is a known flaw of the original research code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from .errors import InputError
from .fit import moments_to_params
from .io import iter_objects

__all__ = ["PriorArrays", "PriorSource", "ConstantPriors", "FilePriors", "priors_from_moments"]


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
    """Anything that yields priors for problems given their ids and question texts."""

    def priors(self, ids: Sequence[str], questions: Sequence[str | None]) -> PriorArrays: ...


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

    def priors(self, ids, questions) -> PriorArrays:
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

    def priors(self, ids, questions) -> PriorArrays:
        missing = [i for i in ids if i not in self._rows]
        if missing:
            raise InputError(f"no prior for {len(missing)} problem(s), e.g. id {missing[0]!r}", str(self.path))
        rows = np.array([self._rows[i] for i in ids], dtype=float).reshape(-1, 4)
        return PriorArrays(rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3])


def _number(value, where: str, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"must be a finite number, got {value!r}", f"{where} field {field}")
    return float(value)
