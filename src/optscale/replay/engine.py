"""Replay policies over a stored pool and collect comparable statistics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from ..policies.base import ReplayBatch
from ..policies.common import PolicyBase
from .batch import check_seed
from .metrics import BonCurve, PolicyStats, bon_curve, evaluate

__all__ = ["ReplayResult", "replay_policies"]


@dataclass
class ReplayResult:
    """Statistics of several policies on one pool, with its fixed-N BoN curve."""

    dataset: str
    curve: BonCurve
    stats: list[PolicyStats]

    def to_json(self) -> dict:
        return {
            "dataset": self.dataset,
            "policies": [s.as_dict() for s in self.stats],
            "bon_curve": self.curve.rows(),
        }


def replay_policies(
    batch: ReplayBatch,
    policies: Sequence[PolicyBase],
    dataset: str = "pool",
    seed: int = 0,
    on_done: Callable[[PolicyBase], None] | None = None,
) -> ReplayResult:
    """Run each policy on every problem and order of ``batch``; the BoN curve spans the pool."""
    seed = check_seed(seed)
    curve = bon_curve(batch)
    stats = []
    for policy in policies:
        stats.append(evaluate(batch, policy.replay(batch), policy, curve, seed=seed))
        if on_done is not None:
            on_done(policy)
    return ReplayResult(dataset, curve, stats)
