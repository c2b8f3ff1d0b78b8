"""Fixed budgets: Best-of-N and self-consistency draw exactly ``n_max`` samples."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from .common import PolicyBase
from .registry import register_policy
from .episode import Step
from .selection import Selection


@register_policy
class BestOfN(PolicyBase):
    """Draw ``n_max`` samples and return the one with the best verifier score.

    The stopping rule reads no scores, so with ``select=majority`` it runs on answer-only pools.
    """

    name: ClassVar[str] = "bon"
    label: ClassVar[str] = "Best-of-N (BoN)"  # row name in report tables
    needs_scores: ClassVar[bool] = False

    def decide(self, episode) -> Step:
        return Step(episode.n >= self.n_max, self.n_max, "n_max")

    def replay_stops(self, batch):
        return np.full(batch.flat_available().shape, self.n_max), {}


@register_policy
class SelfConsistency(BestOfN):
    """Draw ``n_max`` samples and return the majority answer (Wang et al., 2023)."""

    name: ClassVar[str] = "sc"
    label: ClassVar[str] = "Self-Consistency"  # row name in report tables
    select: Selection = Selection.MAJORITY
