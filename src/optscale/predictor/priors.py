"""From predicted score moments to OptScale^t priors on the truncated normal's parameters."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import InputError
from ..priors import PriorArrays, priors_from_moments
from .base import Prediction, Predictor, load
from .data import Problems

__all__ = ["DEFAULT_MODEL", "PredictorPriors", "load_default", "prior_rows"]

#: The packaged default predictor (kernel kind), trained on the MATH score moments.
DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "data" / "predictor" / "default"


def load_default() -> Predictor:
    """The packaged default predictor (what :func:`optscale.compose.build_policy` gives OptScale^t)."""
    if not (DEFAULT_MODEL / "config.json").is_file():
        raise InputError("the packaged default predictor is missing; reinstall optscale", str(DEFAULT_MODEL))
    return load(DEFAULT_MODEL)


def _to_priors(pred: Prediction, widths: tuple[float, float]) -> PriorArrays:
    return priors_from_moments(pred.mean, pred.std, widths[0], widths[1])


class PredictorPriors:
    """A :class:`~optscale.priors.PriorSource` that predicts priors from question texts.

    Predicted moments are moment-matched to ``(mu, sigma)``. The widths are the predictor's
    held-out error in that parameter space unless ``width`` (a number, or a pair
    ``(width_mu, width_sigma)``) overrides them.
    """

    def __init__(self, predictor: Predictor | None = None, width: float | tuple[float, float] | None = None):
        self.predictor = predictor if predictor is not None else load_default()
        if width is None:
            if self.predictor.widths is None:
                raise InputError("the predictor is not fitted", "predictor")
            width = self.predictor.widths
        pair = (width, width) if np.isscalar(width) else tuple(width)
        if len(pair) != 2 or not all(float(w) > 0 for w in pair):
            raise InputError(f"width must be a positive number or a pair of them, got {width!r}", "width")
        self.widths = (float(pair[0]), float(pair[1]))

    def priors(self, ids: Sequence[str], questions: Sequence[str | None]) -> PriorArrays:
        if len(ids) != len(questions):
            raise InputError(f"{len(ids)} ids but {len(questions)} questions", "questions")
        return _to_priors(self.predictor.predict(Problems.from_texts(questions, ids)), self.widths)


def prior_rows(predictor: Predictor, problems: Problems) -> list[dict]:
    """One priors-file row per problem: predicted moments, their uncertainty, parameters, widths."""
    pred = predictor.predict(problems)
    params = _to_priors(pred, predictor.widths)
    return [
        {"id": pid, "score_mean": float(pred.mean[i]), "score_std": float(pred.std[i]),
         "score_mean_sd": float(pred.mean_sd[i]), "score_std_sd": float(pred.std_sd[i]),
         "mu": float(params.mu[i]), "sigma": float(params.sigma[i]),
         "width_mu": float(params.width_mu[i]), "width_sigma": float(params.width_sigma[i])}
        for i, pid in enumerate(problems.ids)
    ]
