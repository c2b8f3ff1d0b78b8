"""The one checker of plain values passed in code or read from files: integers, numbers, seeds, budgets.

Python reads ``True`` as the integer 1, so ``n_max=True`` or a JSON ``"seed": true`` would run
quietly with another value: every check here refuses booleans for numbers. Each ``check_*`` raises
:class:`~optscale.errors.InputError` naming the place (``where``: an argument, a setting or
``file:line field``) and returns the value as a plain ``int`` or ``float``; :func:`is_int` and
:func:`is_number` are the same tests for callers that report errors in their own shape (the
server's OpenAI-style errors).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from .errors import InputError

__all__ = ["MAX_SEED", "N_MAX_LIMIT", "check_int", "check_n_max", "check_number", "check_seed", "is_int", "is_number"]

#: Largest budget anywhere (``n_max``): far beyond any real use, small enough for every array, and
#: what a pool may hold per problem (``pools.MAX_SAMPLES``), so a live run's pool can always be replayed.
N_MAX_LIMIT = 65_536

#: Largest seed: scikit-learn's ``random_state`` (the predictor's folds) takes 32 bits, and every
#: other seed (sample orders, bootstrap, splits) follows the same rule.
MAX_SEED = 2**32 - 1


def is_int(value: Any, low: int | None = None, high: int | None = None) -> bool:
    """Whether ``value`` is an integer (numpy's too, never a bool) within ``[low, high]``."""
    return (isinstance(value, numbers.Integral) and not isinstance(value, bool)
            and (low is None or value >= low) and (high is None or value <= high))


def is_number(value: Any, low: float | None = None, high: float | None = None, finite: bool = True) -> bool:
    """Whether ``value`` is a real number (never a bool; finite unless ``finite`` is False) within ``[low, high]``."""
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and (not finite or math.isfinite(value))
            and (low is None or value >= low) and (high is None or value <= high))


def _range(low: float | None, high: float | None, integers: bool) -> str:
    if low is not None and high is not None:
        return f"from {low:,} to {high:,}" if integers else f"in [{low:g}, {high:g}]"
    return f">= {low:,}" if low is not None else f"<= {high:,}" if high is not None else ""


def check_int(value: Any, where: str, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an ``int`` (numpy integers too) within ``[low, high]``; booleans and floats are refused."""
    if not is_int(value, low, high):
        bounds = _range(low, high, True)
        raise InputError(f"must be an integer{' ' + bounds if bounds else ''}, got {value!r}"[:300], where)
    return int(value)


def check_number(value: Any, where: str, low: float | None = None, high: float | None = None,
                 what: str = "") -> float:
    """``value`` as a finite ``float`` within ``[low, high]``; booleans, text, NaN and infinity are refused.

    ``what`` names the value at the start of the message (``"label"`` -> ``label must be ...``)."""
    if not is_number(value, low, high):
        bounds = _range(low, high, False)
        kind = f"a number {bounds}" if bounds else "a finite number"
        raise InputError(f"{what + ' ' if what else ''}must be {kind}, got {value!r}"[:300], where)
    return float(value)


def check_seed(value: Any, where: str = "seed") -> int:
    """A seed: an integer from 0 to :data:`MAX_SEED` (2**32-1)."""
    if is_int(value, 0, MAX_SEED):
        return int(value)
    raise InputError(f"must be an integer from 0 to 2**32-1, got {value!r}"[:300], where)


def check_n_max(value: Any, where: str = "n_max") -> int:
    """A budget (most samples for one problem): an integer from 1 to :data:`N_MAX_LIMIT`."""
    return check_int(value, where, 1, N_MAX_LIMIT)
