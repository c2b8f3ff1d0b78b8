"""Grade an extracted answer against the gold answer with math-verify.

``math_verify.verify(gold, target)`` is asymmetric (assignments such as ``x=3`` and relations
such as ``1 < x < 2`` are only simplified on the gold side), so the gold answer always goes
first. math-verify enforces its time limits with ``signal.alarm``, which only works in the
main thread; elsewhere the limits are switched off (``parsing_timeout=None``,
``timeout_seconds=None``) instead of failing. math-verify is imported on first use because
it pulls in sympy, which would slow down every CLI start.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from functools import lru_cache

from ..errors import InputError

__all__ = ["grade", "grade_many", "TIMEOUT_SECONDS"]

TIMEOUT_SECONDS = 5
"""Limit on each parse and each comparison (main thread only)."""

_BOXED_PREFIXES = ("\\boxed", "\\fbox")


def _boxed(answer: str) -> str:
    """Wrap in ``\\boxed{}`` so math-verify's LaTeX extraction sees the whole answer."""
    stripped = answer.strip()
    if stripped.startswith(_BOXED_PREFIXES):
        return stripped
    return f"\\boxed{{{stripped}}}"


@lru_cache(maxsize=65536)
def _grade_cached(gold: str, prediction: str) -> bool:
    from math_verify import parse, verify
    from math_verify.errors import TimeoutException

    limit = TIMEOUT_SECONDS if threading.current_thread() is threading.main_thread() else None
    try:
        gold_parsed = parse(_boxed(gold), parsing_timeout=limit)
        prediction_parsed = parse(_boxed(prediction), parsing_timeout=limit)
        if not gold_parsed or not prediction_parsed:
            return False
        return bool(verify(gold_parsed, prediction_parsed, timeout_seconds=limit))
    except (Exception, TimeoutException):
        # A grader crash on one odd answer must not stop a whole pool: it counts as wrong.
        return False


def grade(gold: str, prediction: str | None) -> bool:
    """Whether ``prediction`` is mathematically equal to ``gold`` (never raises).

    A missing or blank prediction (or gold) is wrong. Results are cached per
    ``(gold, prediction)`` pair because pools repeat the same answers many times.
    """
    if prediction is None or not prediction.strip() or not gold.strip():
        return False
    return _grade_cached(gold, prediction)


def grade_many(golds: Sequence[str], predictions: Sequence[str | None]) -> list[bool]:
    """:func:`grade` applied pairwise; both sequences must have the same length."""
    if len(golds) != len(predictions):
        raise InputError(
            f"{len(golds)} gold answers but {len(predictions)} predictions", where="grade_many"
        )
    return [grade(gold, prediction) for gold, prediction in zip(golds, predictions, strict=True)]
