"""Problems and training labels for the prior predictor.

*Problems* (``id``, ``question``, optional ``subject`` and ``level``), as in the benchmark
files, are read by the one reader of problem files, :func:`optscale.pools.problems.load_problems`
(:meth:`Problems.from_file`), so their ids are the ones a live run gives the same file.
*Training rows* (JSON Lines) add the per-problem moments of the verifier scores, either given
(``score_mean``, ``score_std``, the format of ``score-moments/math_train.jsonl``) or computed
here from raw per-sample scores (``samples``: ``[{"score": ...}, ...]`` or plain numbers, as in
completion pools, or ``scores``). Every defect is one :class:`~optscale.errors.InputError`
naming ``file:line``.

The library never guesses where a source checkout keeps its data: :func:`shared_data_dir` is
``$OPTSCALE_SHARED_DATA`` or nothing, and the commands take files as arguments (``--data``).
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..checks import check_number
from ..errors import InputError
from ..io import iter_objects
from ..pools.problems import DatasetSpec, problem_id
from ..pools.problems import load_problems as read_problem_file

__all__ = ["SHARED_DATA_ENV", "Problems", "TrainingSet", "load_training", "shared_data_dir"]

#: The environment variable naming the shared data folder (``benchmarks/``, ``score-moments/``).
SHARED_DATA_ENV = "OPTSCALE_SHARED_DATA"


@dataclass(frozen=True)
class Problems:
    """Problem texts with their ids and, where known, MATH subject and difficulty level."""

    ids: list[str]
    questions: list[str]
    subjects: list[str | None]
    levels: list[int | None]

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, index) -> "Problems":
        index = np.asarray(index, dtype=int)
        return Problems(*([field[i] for i in index] for field in (self.ids, self.questions, self.subjects, self.levels)))

    @classmethod
    def from_texts(cls, questions, ids=None) -> "Problems":
        """Bare question texts (ids default to positions), e.g. for :class:`PredictorPriors`."""
        questions = list(questions)
        ids = [str(i) for i in range(len(questions))] if ids is None else [str(i) for i in ids]
        for k, q in enumerate(questions):
            if not isinstance(q, str) or not q.strip():
                raise InputError("question must be a non-empty string", f"questions[{k}]")
        return cls(ids, questions, [None] * len(questions), [None] * len(questions))

    @classmethod
    def from_file(cls, path: str | Path) -> "Problems":
        """The problems of a benchmark file (JSON Lines, JSON or CSV, ``.gz`` too), read as a live run reads
        it (:func:`optscale.pools.problems.load_problems`: unique ids, ``<stem>/<row>`` for rows without
        one), with the MATH ``subject`` and ``level`` where the rows give them."""
        rows = read_problem_file(DatasetSpec(os.fspath(path)))
        return cls([r.id for r in rows], [r.question for r in rows],
                   [_subject(r.extra.get("subject")) for r in rows], [_level(r.extra.get("level")) for r in rows])


@dataclass(frozen=True)
class TrainingSet:
    """Problems with the mean and standard deviation of their verifier scores."""

    problems: Problems
    mean: np.ndarray
    std: np.ndarray

    def __len__(self) -> int:
        return len(self.problems)

    def subset(self, index) -> "TrainingSet":
        index = np.asarray(index, dtype=int)
        return TrainingSet(self.problems.subset(index), self.mean[index], self.std[index])


def shared_data_dir() -> Path | None:
    """The folder named by ``$OPTSCALE_SHARED_DATA`` (:data:`SHARED_DATA_ENV`), or None when unset or not a folder."""
    env = os.environ.get(SHARED_DATA_ENV)
    return Path(env) if env and Path(env).is_dir() else None


def _subject(value) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def _level(value) -> int | None:
    """MATH levels come as ``3`` or ``"Level 3"``; anything else (e.g. ``"Level ?"``) is unknown."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)) and float(value).is_integer():
        return int(value)
    match = re.fullmatch(r"\s*(?:level\s*)?(\d+)\s*", str(value), re.IGNORECASE)
    return int(match.group(1)) if match else None


def _problem(row: dict, where: str, default_id: str) -> tuple[str, str, str | None, int | None]:
    question = row.get("question")
    if not isinstance(question, str) or not question.strip():
        raise InputError("needs a non-empty 'question' string", where)
    key = problem_id(row.get("id"), f"{where} field id") or default_id
    return key, question, _subject(row.get("subject")), _level(row.get("level"))


def load_problems(path: str | Path) -> Problems:
    """Deprecated: :meth:`Problems.from_file` (``load_problems`` is the reader of problem files,
    :func:`optscale.pools.problems.load_problems`, which this one now uses)."""
    warnings.warn("optscale.predictor.load_problems is deprecated; use Problems.from_file", DeprecationWarning,
                  stacklevel=2)
    return Problems.from_file(path)


def _label(row: dict, key: str, where: str) -> float:
    if key not in row:
        raise InputError(f"missing label {key!r}", where)
    value = row[key]
    return check_number(value, f"{where} field {key}", what="label")


def _moments_from_samples(samples, where: str, key: str) -> tuple[float, float]:
    if not isinstance(samples, list) or not samples:
        raise InputError(f"{key!r} must be a non-empty list", where)
    scores = []
    for j, item in enumerate(samples):
        value = item.get("score") if isinstance(item, dict) else item
        scores.append(check_number(value, f"{where} field {key}[{j}]", 0, 1, what="score"))
    x = np.asarray(scores)
    return float(x.mean()), float(x.std())


def load_training(path: str | Path) -> TrainingSet:
    """Training rows: ``question`` plus ``score_mean``/``score_std``, or raw ``samples``/``scores``.

    Moments computed from raw scores use the population standard deviation, like
    :class:`optscale.fit.SufficientStats`. Rows without an ``id`` are named ``file:line``;
    repeated ids are kept (repeated measurements of one problem).
    """
    path = Path(path)
    out: tuple[list, ...] = ([], [], [], [])
    means: list[float] = []
    stds: list[float] = []
    for where, row in iter_objects(path):
        fields = _problem(row, where, f"{path.name}:{where.rsplit(':', 1)[1]}")
        if "score_mean" in row or "score_std" in row:
            mean, std = _label(row, "score_mean", where), _label(row, "score_std", where)
        elif "samples" in row or "scores" in row:
            key = "samples" if "samples" in row else "scores"
            mean, std = _moments_from_samples(row[key], where, key)
        else:
            raise InputError("needs labels: 'score_mean' and 'score_std', or 'samples' with scores", where)
        if not 0.0 <= mean <= 1.0:
            raise InputError(f"score_mean must lie in [0, 1], got {mean!r}", f"{where} field score_mean")
        if std < 0.0:
            raise InputError(f"score_std must be >= 0, got {std!r}", f"{where} field score_std")
        if std > 0.5:
            raise InputError(f"score_std of scores in [0, 1] cannot exceed 0.5, got {std!r}", f"{where} field score_std")
        for column, value in zip(out, fields):
            column.append(value)
        means.append(mean)
        stds.append(std)
    if not means:
        raise InputError("no training rows in file", str(path))
    return TrainingSet(Problems(*out), np.asarray(means), np.asarray(stds))
