"""Baselines every learned predictor must beat (the training mean, MATH level/subject), and
the feature encoders the learned CPU predictors share.

:class:`MetadataEncoder` is one-hot level and subject, where a problem without them (or with
a value unseen in training) gets the training frequencies, so its prediction falls back to the average effect instead of the reference
category's.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from pydantic import Field

from ..errors import InputError
from ..io import read_json, write_text
from .base import Predictor
from .data import Problems
from .validation import LOG_GRID, EncoderState, Finite, LogGrid, Params, State

__all__ = ["ConstantPredictor", "MetadataPredictor", "MetadataEncoder", "ridge_cv", "tfidf_vectorizer", "save_tfidf", "load_tfidf"]


def ridge_cv(x: np.ndarray, y: np.ndarray, alphas):
    """Ridge regression with one penalty per target chosen by efficient leave-one-out (GCV)."""
    from sklearn.linear_model import RidgeCV

    return RidgeCV(alphas=np.logspace(*alphas), alpha_per_target=True).fit(x, y)


def tfidf_vectorizer(params: dict, vocabulary=None):
    """The TF-IDF of question words both CPU predictors share (``vocabulary`` rebuilds a saved one)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(ngram_range=tuple(params["ngram_range"]), min_df=1 if vocabulary else params["min_df"],
                           sublinear_tf=True, vocabulary=vocabulary, dtype=np.float32)


def save_tfidf(folder: Path, vectorizer) -> dict[str, np.ndarray]:
    """Write the vocabulary (JSON, in column order); return the IDF weights to store with the arrays."""
    vocabulary = sorted(vectorizer.vocabulary_, key=vectorizer.vocabulary_.get)
    write_text(folder / "vocabulary.json", json.dumps(vocabulary, ensure_ascii=False))
    return {"idf": vectorizer.idf_}


def load_tfidf(folder: Path, params: dict, idf: np.ndarray):
    """The vectorizer :func:`save_tfidf` wrote, ready to transform.

    The vocabulary must be distinct strings, one per IDF weight: scikit-learn would only notice
    otherwise when the first question is transformed, with a traceback.
    """
    path = folder / "vocabulary.json"
    vocabulary = read_json(path)
    if not isinstance(vocabulary, list) or not all(isinstance(word, str) for word in vocabulary):
        raise InputError("expected a JSON list of words", str(path))
    if len(set(vocabulary)) != len(vocabulary) or len(vocabulary) != len(idf):
        raise InputError(f"expected {len(idf)} distinct words (one per IDF weight), got {len(vocabulary)} "
                         f"({len(set(vocabulary))} distinct)", str(path))
    vectorizer = tfidf_vectorizer(params, vocabulary)
    vectorizer.idf_ = idf
    return vectorizer


class MetadataEncoder:
    """One-hot ``level`` and ``subject`` with frequency imputation of missing values."""

    def __init__(self, levels: list[str], subjects: list[str], level_freq, subject_freq):
        self.levels, self.subjects = levels, subjects
        self.level_freq = np.asarray(level_freq, float)
        self.subject_freq = np.asarray(subject_freq, float)

    @classmethod
    def fit(cls, problems: Problems) -> "MetadataEncoder":
        levels = sorted({str(v) for v in problems.levels if v is not None})
        subjects = sorted({v for v in problems.subjects if v is not None})
        enc = cls(levels, subjects, np.zeros(len(levels)), np.zeros(len(subjects)))
        lv, sj = enc._onehot(problems.levels, levels, None), enc._onehot(problems.subjects, subjects, None)
        known_l = lv.sum(1) > 0
        known_s = sj.sum(1) > 0
        enc.level_freq = lv[known_l].mean(0) if known_l.any() else enc.level_freq
        enc.subject_freq = sj[known_s].mean(0) if known_s.any() else enc.subject_freq
        return enc

    @staticmethod
    def _onehot(values, categories, fill) -> np.ndarray:
        index = {c: i for i, c in enumerate(categories)}
        out = np.zeros((len(values), len(categories)))
        for row, value in enumerate(values):
            col = index.get(None if value is None else str(value))
            if col is not None:
                out[row, col] = 1.0
            elif fill is not None:
                out[row] = fill
        return out

    @property
    def width(self) -> int:
        return len(self.levels) + len(self.subjects)

    def transform(self, problems: Problems) -> np.ndarray:
        return np.hstack([self._onehot(problems.levels, self.levels, self.level_freq),
                          self._onehot(problems.subjects, self.subjects, self.subject_freq)])

    def state(self) -> dict:
        return {"levels": self.levels, "subjects": self.subjects,
                "level_freq": self.level_freq.tolist(), "subject_freq": self.subject_freq.tolist()}


class ConstantState(State):
    point: tuple[Finite, Finite]


class ConstantPredictor(Predictor):
    """The training mean of each moment, for every problem."""

    kind = "constant"
    state_model = ConstantState

    def _fit(self, problems, targets):
        self.point = targets.mean(axis=0)

    def _predict(self, problems):
        return np.tile(self.point, (len(problems), 1))

    def _save_weights(self, folder: Path) -> dict:
        return {"point": [float(x) for x in self.point]}

    def _load_weights(self, folder: Path, state: dict) -> None:
        self.point = np.asarray(state["point"], float)


class MetadataParams(Params):
    alphas: LogGrid = Field((-3, 3, 25), description=LOG_GRID + " (the ridge penalty grid)")


class MetadataState(State):
    encoder: EncoderState
    #: One row per one-hot column of the encoder (checked in ``_load_weights``).
    coef: list[tuple[Finite, Finite]]
    intercept: tuple[Finite, Finite]


class MetadataPredictor(Predictor):
    """Ridge regression on one-hot MATH level and subject (averages where a problem has none)."""

    kind = "metadata"
    params_model = MetadataParams
    state_model = MetadataState

    def _fit(self, problems, targets):
        self.encoder = MetadataEncoder.fit(problems)
        if not self.encoder.width:
            raise InputError("the metadata predictor needs 'level' or 'subject' in the training data", "training data")
        ridge = ridge_cv(self.encoder.transform(problems), targets, self.params["alphas"])
        self.coef, self.intercept = ridge.coef_.T, ridge.intercept_

    def _predict(self, problems):
        return self.encoder.transform(problems) @ self.coef + self.intercept

    def _save_weights(self, folder: Path) -> dict:
        return {"encoder": self.encoder.state(), "coef": self.coef.tolist(), "intercept": self.intercept.tolist()}

    def _load_weights(self, folder: Path, state: dict) -> None:
        self.encoder = MetadataEncoder(**state["encoder"])
        if len(state["coef"]) != self.encoder.width:
            raise InputError(f"{len(state['coef'])} rows of coefficients for {self.encoder.width} levels and subjects",
                             f"{folder / 'config.json'} field state.coef")
        self.coef, self.intercept = np.asarray(state["coef"], float), np.asarray(state["intercept"], float)
