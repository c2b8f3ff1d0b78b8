"""What early stopping saved, measured on shadow episodes: ``GET /v1/optscale/savings``.

Each shadow episode (:mod:`.shadow`) adds one count to its group (policy, and stopping table
where the policy has one): the episode, whether the early answer equals the answer of all
``n_max`` samples, and the tokens of the early and of all samples. :class:`SavingsCounts`
keeps them in process; its :meth:`~SavingsCounts.snapshot` has the shape a shared backend
(Redis hashes summed over replicas) gives too, ``{group: {name: value}}``, so that
:func:`savings_report` reads either. The agreement rate comes with a Wilson score interval.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Protocol

__all__ = ["SavingsBackend", "SavingsCounts", "savings_report", "wilson_interval", "group_of", "Z95"]

#: The standard normal's 97.5% quantile: a two-sided 95% interval.
Z95 = 1.959963984540054
_NAMES = ("episodes", "agreed", "early_tokens", "full_tokens")


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval of a binomial proportion (None without trials).

    It is the set of ``p`` the score test does not reject, ``|k/n - p| <= z sqrt(p (1 - p) / n)``,
    in closed form; unlike the normal interval it stays within [0, 1] and is not empty at 0 or n.
    """
    if n <= 0:
        return None
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def group_of(policy: str, table: str | None) -> str:
    """The counters' group of a policy and its table (policy names and table file names hold no ``/``)."""
    return f"{policy}/{table}" if table else policy


class SavingsBackend(Protocol):
    """Where the counts live: :class:`SavingsCounts` in process, or a store that replicas share."""

    async def record(self, policy: str, table: str | None, agreed: bool, early_tokens: int,
                     full_tokens: int) -> None: ...

    async def snapshot(self) -> dict[str, dict[str, float]]: ...


class SavingsCounts:
    """The counts of this process."""

    def __init__(self) -> None:
        self._groups: dict[str, dict[str, int]] = {}

    async def record(self, policy: str, table: str | None, agreed: bool, early_tokens: int, full_tokens: int) -> None:
        counts = self._groups.setdefault(group_of(policy, table), dict.fromkeys(_NAMES, 0))
        for name, value in zip(_NAMES, (1, int(agreed), early_tokens, full_tokens)):
            counts[name] += int(value)

    async def snapshot(self) -> dict[str, dict[str, float]]:
        return {g: dict(c) for g, c in sorted(self._groups.items())}


def savings_report(snapshot: Mapping[str, Mapping[str, float]]) -> list[dict[str, Any]]:
    """One row per group: episodes, agreement rate and its 95% Wilson interval, early and full tokens and
    their ratio (``token_share``: the share of full sampling's tokens that the early answers used)."""
    rows = []
    for group, counts in sorted(snapshot.items()):
        policy, _, table = group.partition("/")
        n, agreed = int(counts.get("episodes", 0)), int(counts.get("agreed", 0))
        early, full = int(counts.get("early_tokens", 0)), int(counts.get("full_tokens", 0))
        interval = wilson_interval(agreed, n)
        rows.append({"policy": policy, "table": table or None, "episodes": n, "agreed": agreed,
                     "agreement_rate": agreed / n if n else None,
                     "agreement_ci95": list(interval) if interval else None,
                     "early_tokens": early, "full_tokens": full, "token_share": early / full if full else None})
    return rows
