"""From predicted score moments to OptScale^t priors on the truncated normal's parameters."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import InputError
from ..priors import PriorArrays, priors_from_moments
from .base import Prediction, Predictor, load
from .data import Problems, _problem

__all__ = ["DEFAULT_MODEL", "PredictorPriors", "check_questions", "load_default", "prior_rows", "problems_of"]

#: A generated label, not a question: "question 12", "Problem #3", "q7", "item_4".
_LABEL = re.compile(r"\s*(?:question|problem|prompt|task|item|example|sample|q|p)\s*[#:_./-]?\s*\d+\s*", re.IGNORECASE)
_REMEDY = ("give priors another way: priors=FILE (a priors JSONL), priors=population:CALIB_POOL (fitted on a "
           "calibration pool) or, in `sweep`, priors=population (fitted on its calibration split)")


def check_questions(ids: Sequence[str], questions: Sequence[str | None], where: str = "settings.priors") -> None:
    """Refuse question texts a predictor cannot use: missing ones and placeholders.

    A placeholder (defined conservatively, so a real question is never refused) is a text
    equal to its problem's id, a generated label such as ``question 12`` or ``Problem #3``, or,
    for two or more problems, the same text for every problem. Such pools get a constant,
    off-domain prior, so OptScale^t would miss its promise without a warning.
    """
    texts = [q.strip() if isinstance(q, str) else "" for q in questions]
    missing = [i for i, t in enumerate(texts) if not t]
    if missing:
        raise InputError(f"the predictor needs question texts (a non-empty string for every problem); "
                         f"{len(missing)} of {len(texts)} problem(s) have none, e.g. id {ids[missing[0]]!r}; {_REMEDY}",
                         where)
    fake = [i for i, t in enumerate(texts) if t.casefold() == str(ids[i]).strip().casefold() or _LABEL.fullmatch(t)]
    if len(texts) >= 2 and len(set(texts)) == 1:
        fake = list(range(len(texts)))
    if fake:
        raise InputError(f"the predictor needs real question texts, but {len(fake)} of {len(texts)} problem(s) hold "
                         f"a placeholder (the id, a label like 'question 12', or one text for all), e.g. id "
                         f"{ids[fake[0]]!r}: {texts[fake[0]][:40]!r}; {_REMEDY}", where)


def problems_of(ids: Sequence[str], questions: Sequence[str | None], meta=None) -> Problems:
    """Problems as ``optscale predictor predict`` reads them from a benchmark file: the same
    parsing of ``level`` (``3`` or ``"Level 3"``) and ``subject`` from each problem's ``meta``."""
    meta = list(meta) if meta else [None] * len(ids)
    if not len(ids) == len(questions) == len(meta):
        raise InputError(f"{len(ids)} ids, {len(questions)} questions and {len(meta)} metadata rows", "questions")
    out: tuple[list, ...] = ([], [], [], [])
    for k, (key, question, extra) in enumerate(zip(ids, questions, meta)):
        row = {**(extra or {}), "id": str(key), "question": question}
        for column, value in zip(out, _problem(row, f"questions[{k}]", str(key))):
            column.append(value)
    return Problems(*out)

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

    def priors(self, ids: Sequence[str], questions: Sequence[str | None], meta=None) -> PriorArrays:
        """Priors from the question texts and each problem's ``level``/``subject`` (``meta``), exactly
        as ``optscale predictor predict`` computes them; missing or placeholder questions are refused."""
        if len(ids) != len(questions):
            raise InputError(f"{len(ids)} ids but {len(questions)} questions", "questions")
        check_questions(ids, questions)
        return _to_priors(self.predictor.predict(problems_of(ids, questions, meta)), self.widths)


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
