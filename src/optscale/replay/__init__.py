"""Offline replay of policies over stored completion pools."""

from .batch import build_batch, subset
from .engine import ReplayResult, replay_policies
from .metrics import BonCurve, PolicyStats, bon_curve, evaluate
from .sweep import SweepResult, pareto_mask, split_problems, sweep

__all__ = [
    "build_batch", "subset", "ReplayResult", "replay_policies", "BonCurve", "PolicyStats", "bon_curve",
    "evaluate", "SweepResult", "pareto_mask", "split_problems", "sweep",
]
