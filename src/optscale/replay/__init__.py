"""Offline replay of policies over stored completion pools."""

from .batch import MAX_ORDERS, build_batch, check_orders, check_seed, subset
from .engine import ReplayResult, replay_policies
from .metrics import BonCurve, PolicyStats, bon_curve, evaluate
from .sweep import SweepResult, check_sweep, pareto_mask, split_problems, sweep

__all__ = [
    "MAX_ORDERS", "build_batch", "check_orders", "check_seed", "subset", "ReplayResult", "replay_policies", "BonCurve",
    "PolicyStats", "bon_curve", "evaluate", "SweepResult", "check_sweep", "pareto_mask", "split_problems", "sweep",
]
