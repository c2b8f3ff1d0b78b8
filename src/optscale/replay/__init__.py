"""Offline replay of policies over stored completion pools."""

from .arrays import OrderedPool, PoolArrays, arrays_from_problems, read_pool_arrays
from .batch import MAX_ORDERS, build_batch, check_orders, check_seed, subset
from .engine import ReplayResult, collect, replay_policies
from .labels import LABELS, check_labels, consensus_labels, full_answers, labels_note, relabel
from .metrics import (RULES, TIE, Baseline, BonCurve, Bootstrap, FixedCurves, PolicyStats, ReplayOutcome, bon_curve,
                      evaluate, fixed_curves, outcome_of, policy_stats, upper_envelope)
from .sweep import OBJECTIVES, SweepResult, check_sweep, grid_points, pareto_mask, split_problems, sweep

__all__ = [
    "MAX_ORDERS", "build_batch", "check_orders", "check_seed", "subset", "ReplayResult", "collect", "replay_policies",
    "BonCurve", "PolicyStats", "bon_curve", "evaluate", "SweepResult", "check_sweep", "pareto_mask", "split_problems",
    "sweep", "OrderedPool", "PoolArrays", "arrays_from_problems", "read_pool_arrays", "RULES", "Baseline", "Bootstrap",
    "FixedCurves", "ReplayOutcome", "fixed_curves", "outcome_of", "policy_stats", "upper_envelope", "OBJECTIVES",
    "grid_points", "LABELS", "check_labels", "consensus_labels", "full_answers", "labels_note", "relabel", "TIE",
]


def __getattr__(name: str):
    from .metrics import renamed  # Outcome, now ReplayOutcome, with a deprecation warning

    try:
        return renamed(name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
