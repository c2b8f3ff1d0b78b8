"""Choose (s_min, alpha) on a calibration split, report on held-out problems.

Reported settings are never tuned on the data they are reported on: problems are split once
(seeded), every grid point is evaluated on both halves, the setting for each budget is picked
on the calibration half only, and the held-out half gives the numbers in the report. The full
grid, with its Pareto front on each half, is kept for inspection.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import numpy as np

from ..errors import InputError
from ..policies.base import ReplayBatch
from ..policies.registry import make_policy
from .batch import check_seed, subset
from .metrics import BonCurve, PolicyStats, bon_curve, evaluate

__all__ = ["SweepResult", "check_sweep", "pareto_mask", "split_problems", "sweep"]

Objective = Literal["match-bon", "gain"]


@dataclass
class SweepResult:
    policy: str
    objective: str
    grid: list[dict]  # one row per (budget, s_min, alpha, split) with its statistics
    selected: list[dict]  # per budget: the chosen setting, its calibration and held-out rows
    calib_curve: BonCurve
    test_curve: BonCurve
    calib_problems: int
    test_problems: int


def _check_fraction(calib_fraction: float) -> None:
    if not 0 < calib_fraction < 1:
        raise InputError(f"must lie strictly between 0 and 1, got {calib_fraction}", "calib_fraction")


def split_problems(count: int, calib_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of problem indices into calibration and held-out sets (both non-empty)."""
    _check_fraction(calib_fraction)
    seed = check_seed(seed)
    if count < 2:
        raise InputError("a calibration split needs at least 2 problems", "pool")
    perm = np.random.default_rng(seed).permutation(count)
    k = min(count - 1, max(1, round(calib_fraction * count)))
    return np.sort(perm[:k]), np.sort(perm[k:])


def pareto_mask(tokens: np.ndarray, accuracy: np.ndarray) -> np.ndarray:
    """Points not dominated by any other (no cheaper-or-equal point is strictly more accurate)."""
    tokens, accuracy = np.asarray(tokens), np.asarray(accuracy)
    dominated = (
        (tokens[None, :] <= tokens[:, None]) & (accuracy[None, :] >= accuracy[:, None])
        & ((tokens[None, :] < tokens[:, None]) | (accuracy[None, :] > accuracy[:, None]))
    ).any(axis=1)
    return ~dominated


def _choose(rows: list[PolicyStats], objective: Objective) -> int:
    if objective == "gain":
        return int(np.nanargmax([r.gain_vs_bon_curve for r in rows]))
    target = rows[0].bon_accuracy
    ok = [i for i, r in enumerate(rows) if r.accuracy >= target - 1e-12]
    if ok:
        return min(ok, key=lambda i: (rows[i].mean_tokens, -rows[i].accuracy))
    return int(np.argmax([r.accuracy for r in rows]))


def check_sweep(policy: str, budgets: Sequence[int], s_mins: Sequence[float], alphas: Sequence[float],
                settings: dict | None = None, calib_fraction: float = 0.5, seed: int = 0,
                objective: Objective = "match-bon") -> None:
    """Check every argument of :func:`sweep` and build each policy of the grid once, before any work.

    Errors name ``budgets``, ``s_mins``, ``alphas`` for the grid, else the argument
    (``calib_fraction``, ``seed``, ``objective``, ``policy``, ``settings.<key>``).
    """
    _check_fraction(calib_fraction)
    check_seed(seed)
    if objective not in ("match-bon", "gain"):
        raise InputError(f"unknown objective {objective!r}; use match-bon or gain", "objective")
    for name, values in (("budgets", budgets), ("s_mins", s_mins), ("alphas", alphas)):
        if len(values) == 0:
            raise InputError("needs at least one value", name)
    grid_names = {"n_max": "budgets", "settings.s_min": "s_mins", "settings.alpha": "alphas"}
    for budget in budgets:
        for s_min in s_mins:
            for alpha in alphas:
                try:
                    make_policy(policy, budget, **{**(settings or {}), "s_min": s_min, "alpha": alpha})
                except InputError as exc:
                    raise exc.renamed(grid_names) from None


def sweep(
    batch: ReplayBatch,
    policy: str,
    budgets: Sequence[int],
    s_mins: Sequence[float],
    alphas: Sequence[float],
    settings: dict | None = None,
    calib_fraction: float = 0.5,
    seed: int = 0,
    objective: Objective = "match-bon",
    on_point: Callable[[], None] | None = None,
) -> SweepResult:
    """Evaluate the grid on both splits and select per budget on the calibration split.

    ``match-bon`` picks the cheapest setting whose calibration accuracy reaches fixed BoN at
    the same budget (the paper's claim: same accuracy, fewer tokens), falling back to the most
    accurate; ``gain`` picks the largest accuracy gain over the BoN curve at equal tokens.
    """
    check_sweep(policy, budgets, s_mins, alphas, settings, calib_fraction, seed, objective)
    calib_idx, test_idx = split_problems(batch.shape[0], calib_fraction, seed)
    halves = {"calibration": subset(batch, calib_idx), "held_out": subset(batch, test_idx)}
    curves = {k: bon_curve(v) for k, v in halves.items()}
    grid: list[dict] = []
    selected: list[dict] = []
    for budget in budgets:
        per_split: dict[str, list[PolicyStats]] = {"calibration": [], "held_out": []}
        for s_min in s_mins:
            for alpha in alphas:
                pol = make_policy(policy, int(budget), **{**(settings or {}), "s_min": s_min, "alpha": alpha})
                for split, half in halves.items():
                    st = evaluate(half, pol.replay(half), pol, curves[split], seed=seed)
                    per_split[split].append(st)
                if on_point is not None:
                    on_point()
        for split, rows in per_split.items():
            front = pareto_mask([r.mean_tokens for r in rows], [r.accuracy for r in rows])
            for r, on_front in zip(rows, front):
                grid.append({"split": split, "budget": int(budget), "s_min": r.settings["s_min"],
                             "alpha": r.settings["alpha"], "pareto": bool(on_front), **_flat(r)})
        i = _choose(per_split["calibration"], objective)
        selected.append({
            "budget": int(budget),
            "s_min": per_split["calibration"][i].settings["s_min"],
            "alpha": per_split["calibration"][i].settings["alpha"],
            "calibration": per_split["calibration"][i],
            "held_out": per_split["held_out"][i],
        })
    return SweepResult(policy, objective, grid, selected, curves["calibration"], curves["held_out"],
                       len(calib_idx), len(test_idx))


def _flat(stats: PolicyStats) -> dict:
    d = stats.as_dict()
    d.pop("settings")
    return d
