"""The one checker of plain values passed in code or read from files: integers, numbers, seeds, budgets.

Python reads ``True`` as the integer 1, so ``n_max=True`` or a JSON ``"seed": true`` would run
quietly with another value: every check here refuses booleans for numbers. Each raises
:class:`~optscale.errors.InputError` naming the place (``where``: an argument, a setting or
``file:line field``) and returns the value as a plain ``int`` or ``float``.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from .errors import InputError

__all__ = ["MAX_SEED", "N_MAX_LIMIT", "check_int", "check_n_max", "check_number", "check_seed"]

#: Largest budget anywhere (``n_max``): far beyond any real use, small enough for every array, and
#: what a pool may hold per problem (``pools.MAX_SAMPLES``), so a live run's pool can always be replayed.
N_MAX_LIMIT = 65_536

#: Largest seed: scikit-learn's ``random_state`` (the predictor's folds) takes 32 bits, and every
#: other seed (sample orders, bootstrap, splits) follows the same rule.
MAX_SEED = 2**32 - 1


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _range(low: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        return f"from {low:,} to {high:,}" if isinstance(low, int) and isinstance(high, int) else f"in [{low}, {high}]"
    return f">= {low:,}" if low is not None else f"<= {high:,}" if high is not None else ""


def check_int(value: Any, where: str, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an ``int`` (numpy integers too) within ``[low, high]``; booleans and floats are refused."""
    if not _is_int(value) or (low is not None and value < low) or (high is not None and value > high):
        bounds = _range(low, high)
        raise InputError(f"must be an integer{' ' + bounds if bounds else ''}, got {value!r}"[:300], where)
    return int(value)


def check_number(value: Any, where: str, low: float | None = None, high: float | None = None,
                 what: str = "") -> float:
    """``value`` as a finite ``float`` within ``[low, high]``; booleans, text, NaN and infinity are refused.

    ``what`` names the value at the start of the message (``"label"`` -> ``label must be ...``)."""
    ok = (isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
          and (low is None or value >= low) and (high is None or value <= high))
    if not ok:
        bounds = _range(low, high)
        kind = f"a number {bounds}" if bounds else "a finite number"
        raise InputError(f"{what + ' ' if what else ''}must be {kind}, got {value!r}"[:300], where)
    return float(value)


def check_seed(value: Any, where: str = "seed") -> int:
    """A seed: an integer from 0 to :data:`MAX_SEED` (2**32-1)."""
    if _is_int(value) and 0 <= value <= MAX_SEED:
        return int(value)
    raise InputError(f"must be an integer from 0 to 2**32-1, got {value!r}"[:300], where)


def check_n_max(value: Any, where: str = "n_max") -> int:
    """A budget (most samples for one problem): an integer from 1 to :data:`N_MAX_LIMIT`."""
    return check_int(value, where, 1, N_MAX_LIMIT)
