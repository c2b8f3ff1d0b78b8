"""Read and write completion pools (JSON Lines).

Pools can hold many thousands of long responses, so reading streams one line at a time
(``.gz`` pools transparently, through :mod:`optscale.io`), and every problem in the file is
reported as ``file:LINE field NAME`` so that it can be found and fixed. Writing is atomic
(:func:`optscale.io.atomic_open`): an interrupted or failed write never leaves a half-written
pool behind.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator
from typing import Any

from pydantic import ValidationError

from ..answers import grade
from ..errors import InputError
from ..io import StrPath, atomic_open, iter_objects
from .schema import PoolProblem

__all__ = ["iter_pool", "read_pool", "write_pool", "format_loc", "validation_message"]


def format_loc(loc: Iterable[str | int]) -> str:
    """``("samples", 3, "score")`` -> ``samples[3].score``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def validation_message(error: ValidationError) -> tuple[str, str]:
    """The field and a short message for the first error of ``error`` (its count if several)."""
    first = error.errors(include_url=False)[0]
    if first["type"] == "missing":
        message = "missing"
    else:
        value = repr(first["input"])
        value = value if len(value) <= 40 else value[:37] + "..."
        message = f"{first['msg']} (got {value})"
    if error.error_count() > 1:
        message += f"; and {error.error_count() - 1} more error(s)"
    return format_loc(first["loc"]), message


def _nonfinite_field(value: Any, loc: tuple[str | int, ...] = ()) -> tuple[str | int, ...] | None:
    """Where ``value`` holds NaN or Infinity, which ``json.loads`` accepts but JSON forbids."""
    if isinstance(value, float):
        return None if math.isfinite(value) else loc
    if isinstance(value, dict):
        items: Iterable[tuple[str | int, Any]] = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = _nonfinite_field(item, (*loc, key))
        if found is not None:
            return found
    return None


def iter_pool(path: StrPath, grade_missing: bool = True) -> Iterator[PoolProblem]:
    """Validated problems of the pool at ``path``, one line at a time.

    Raises :class:`InputError` naming ``path:LINE`` and the field for malformed JSON, a
    line that is not an object, a number out of range (token counts above 2**53 - 1), NaN or Infinity, missing fields, wrong types, scores outside
    [0, 1], an empty ``samples`` list, a repeated id (naming the first line too) and a file
    with no problems. Blank lines are skipped. Samples without ``correct`` are graded
    against the gold answer when ``grade_missing``; an answer whose grading times out or fails
    counts as wrong, is logged with its ``path:LINE samples[J]`` and is counted
    (:func:`optscale.answers.grade.grading_problems`).

    ``score`` is optional (answer-only pools), but a pool has a score on every sample or on
    none: the first sample that differs from the pool's first is refused, naming both.
    """
    name = os.fspath(path)
    first_line: dict[str, int] = {}
    scored: tuple[bool, str] | None = None  # whether the pool's first sample has a score, and where
    for where, obj in iter_objects(path, expected="a JSON object (one problem per line)"):
        lineno = int(where.rpartition(":")[2])
        bad = _nonfinite_field(obj)
        if bad is not None:
            message = "NaN and Infinity are not valid JSON numbers"
            raise InputError(message, where=f"{where} field {format_loc(bad)}")
        try:
            problem = PoolProblem.model_validate(obj)
        except ValidationError as exc:
            field, message = validation_message(exc)
            raise InputError(message, where=f"{where} field {field}") from None
        if problem.id in first_line:
            raise InputError(
                f"duplicate id {problem.id!r} (first on line {first_line[problem.id]})",
                where=f"{where} field id",
            )
        first_line[problem.id] = lineno
        for j, sample in enumerate(problem.samples):
            has = sample.score is not None
            if scored is None:
                scored = (has, f"line {lineno} samples[{j}]")
            elif has != scored[0]:
                state = "present" if has else "missing"
                other = "has one" if scored[0] else "has none"
                raise InputError(f"{state}, but {scored[1]} {other}: a pool has a score on every sample or on none",
                                 where=f"{where} field samples[{j}].score")
        if grade_missing:
            for j, sample in enumerate(problem.samples):
                if sample.correct is None:
                    sample.correct = grade(problem.answer, sample.answer, where=f"{where} samples[{j}]")
        yield problem
    if not first_line:
        raise InputError("empty pool: no problems", where=name)


def read_pool(path: StrPath, grade_missing: bool = True) -> list[PoolProblem]:
    """All problems of a pool; see :func:`iter_pool`."""
    return list(iter_pool(path, grade_missing=grade_missing))


def write_pool(path: StrPath, problems: Iterable[PoolProblem]) -> int:
    """Write ``problems`` as a pool at ``path`` atomically and return how many were written.

    On any failure (an unserialisable value, NaN, a full disk) an existing pool is left
    untouched (see :func:`optscale.io.atomic_open`); its permissions are kept.
    """
    count = 0
    with atomic_open(path, "w") as handle:
        for problem in problems:
            # Python mode: pydantic's JSON mode would quietly turn NaN into null.
            data = problem.model_dump()
            handle.write(json.dumps(data, ensure_ascii=False, allow_nan=False) + "\n")
            count += 1
    return count
