"""Choose a policy's settings on a calibration split, report them on held-out problems.

Reported settings are never tuned on the data they are reported on: problems are split
(seeded), every grid point is replayed once on every problem, the setting for each budget is
picked from calibration problems only, and held-out problems give the numbers in the report.
With ``splits`` > 1 the split is repeated over that many seeds, and the report says how the
held-out numbers vary and in how many splits the chosen setting beat the envelope of fixed-N
methods (see :mod:`optscale.replay.metrics`). The grid is any policy's settings
(``grid={"t": [...], "k": [...]}``); ``s_mins``/``alphas`` remain OptScale's shorthand.

Objectives, each decided on calibration problems:

- ``match`` (``match-bon`` is its old name): the cheapest setting whose accuracy reaches
  ``target`` (default: fixed Best-of-N at the same budget, majority vote for answer-only pools);
- ``budget``: the most accurate setting whose mean tokens are at most ``token_share`` x those
  of that fixed method;
- ``gain``: the largest accuracy gain over the envelope at equal tokens, if any is positive.

When no setting meets the objective on calibration problems, nothing is selected for that
budget and the result says so (``met`` False and ``reason``): there is no silent fallback.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..checks import check_int
from ..errors import InputError
from ..policies.registry import make_policy
from .arrays import OrderedPool
from .batch import check_seed, subset
from .engine import collect
from .metrics import TIE, Baseline, BonCurve, FixedCurves, PolicyStats, ReplayOutcome, policy_stats
from .parallel import check_parallel, run_units

__all__ = ["OBJECTIVES", "SweepResult", "check_sweep", "choose", "grid_points", "pareto_mask", "split_problems", "sweep"]

#: Objectives and what each selects (``match-bon`` is kept as the old name of ``match``).
OBJECTIVES = {
    "match": "cheapest setting reaching the target accuracy (default: fixed BoN at the same budget)",
    "budget": "most accurate setting within a share of fixed BoN's tokens",
    "gain": "largest gain over the envelope of fixed-N methods at equal tokens",
    "match-bon": "old name of match",
}
#: Most split seeds of one sweep.
MAX_SPLITS = 100


@dataclass
class SweepResult:
    policy: str
    objective: str
    grid: list[dict]  # one row per (split seed, split, budget, setting) with its statistics
    selected: list[dict]  # per budget, first split: the chosen setting (or met False), its two rows
    calib_curve: BonCurve
    test_curve: BonCurve
    calib_problems: int
    test_problems: int
    grid_keys: tuple[str, ...] = ()
    splits: list[dict] = field(default_factory=list)  # per split seed: {"seed", "selected": [...]}
    summary: list[dict] = field(default_factory=list)  # per budget, over split seeds
    target: float | None = None
    token_share: float = 0.5


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


#: Most settings one sweep replays per budget (a grid's size is the product of its axes' lengths).
MAX_GRID_POINTS = 10_000


def grid_points(s_mins: Sequence | None = None, alphas: Sequence | None = None,
                grid: Mapping[str, Sequence] | None = None) -> tuple[tuple[str, ...], list[dict]]:
    """The grid's keys and every combination of their values (one empty point for an empty grid)."""
    axes: dict[str, list] = {}
    for key, values, where in (("s_min", s_mins, "s_mins"), ("alpha", alphas, "alphas")):
        if values is not None:
            if len(values) == 0:
                raise InputError("needs at least one value", where)
            axes[key] = list(values)
    for key, values in (grid or {}).items():
        if key in axes:
            raise InputError(f"{key} is given twice", f"grid.{key}")
        if len(values) == 0:
            raise InputError("needs at least one value", f"grid.{key}")
        axes[key] = list(values)
    keys = tuple(axes)
    size = math.prod(len(v) for v in axes.values())
    if size > MAX_GRID_POINTS:
        raise InputError(f"{size:,} combinations of {', '.join(keys)}; at most {MAX_GRID_POINTS:,} (each is replayed "
                         "on every problem and order)", "grid")
    return keys, [dict(zip(keys, combo)) for combo in itertools.product(*axes.values())]


def _is_population(settings: Mapping[str, Any]) -> bool:
    from ..priors import POPULATION

    return isinstance(settings.get("priors"), str) and settings["priors"] == POPULATION


def check_sweep(policy: str, budgets: Sequence[int], s_mins: Sequence[float] | None = None,
                alphas: Sequence[float] | None = None, settings: dict | None = None, calib_fraction: float = 0.5,
                seed: int = 0, objective: str = "match", *, grid: Mapping[str, Sequence] | None = None,
                target: float | None = None, token_share: float = 0.5, splits: int = 1) -> list[tuple[int, dict]]:
    """Check every argument of :func:`sweep` and build each policy of the grid once, before any work.

    A setting both swept and fixed in ``settings`` is refused (the grid would silently win).
    Returns the ``(budget, setting)`` pairs of the grid. Errors name ``budgets``, ``s_mins``,
    ``alphas``, ``grid.<key>`` for the grid, else the argument (``calib_fraction``, ``seed``,
    ``objective``, ``target``, ``token_share``, ``splits``, ``policy``, ``settings.<key>``).
    """
    _check_fraction(calib_fraction)
    check_seed(seed)
    if objective not in OBJECTIVES:
        raise InputError(f"unknown objective {objective!r}; use {', '.join(OBJECTIVES)}", "objective")
    if target is not None and not 0 <= target <= 1:
        raise InputError(f"must be an accuracy from 0 to 1, got {target}", "target")
    if not 0 < token_share <= 1:
        raise InputError(f"must lie in (0, 1], got {token_share}", "token_share")
    check_int(splits, "splits", 1, MAX_SPLITS)
    if len(budgets) == 0:
        raise InputError("needs at least one value", "budgets")
    keys, points = grid_points(s_mins, alphas, grid)
    both = [k for k in keys if k in (settings or {})]
    if both:
        where = {"s_min": "s_mins", "alpha": "alphas"}.get(both[0], f"grid.{both[0]}")
        raise InputError(f"{both[0]} is both swept and fixed to {settings[both[0]]!r}: sweep it or fix it, "
                         "not both", where)
    names = {"n_max": "budgets", "settings.s_min": "s_mins", "settings.alpha": "alphas"}
    names.update({f"settings.{k}": f"grid.{k}" for k in (grid or {})})
    base = {k: v for k, v in (settings or {}).items() if not (k == "priors" and _is_population(settings))}
    pairs = []
    for budget in budgets:
        for point in points:
            try:
                make_policy(policy, budget, **{**base, **point})
            except InputError as exc:
                raise exc.renamed(names) from None
            pairs.append((int(budget), point))
    return pairs


def _population_prior(data, rows: np.ndarray):
    """OptScale^t's ``priors=population``: an empirical-Bayes prior fitted on the calibration rows only."""
    from ..priors import PopulationPriors
    from .arrays import OrderedPool

    if isinstance(data, OrderedPool):
        a = data.arrays
        if not a.has_scores:
            raise InputError(f"a population prior is fitted on scores, and {a.source} has none", "settings.priors")
        scores, ids = [a.score[i, :a.available[i]] for i in rows], [a.ids[i] for i in rows]
    else:
        first = data.score[:, 0, :]
        scores, ids = [first[i, :data.available[i]] for i in rows], [data.ids[i] for i in rows]
    return PopulationPriors.fit(scores, ids, strict=False)


def _target_and_share(curve: BonCurve, budget: int, target: float | None) -> tuple[float, float]:
    k = min(budget, len(curve.n)) - 1
    return (float(curve.accuracy[k]) if target is None else float(target)), float(curve.mean_tokens[k])


def choose(rows: list[PolicyStats], objective: str, target: float, fixed_tokens: float,
           token_share: float) -> tuple[int | None, str]:
    """Index of the chosen row (None when nothing meets the objective) and what was asked."""
    if objective in ("match", "match-bon"):
        ok = [i for i, r in enumerate(rows) if r.accuracy >= target - 1e-12]
        what = f"calibration accuracy >= {100 * target:.1f}%"
        if not ok:
            best = max(r.accuracy for r in rows)
            return None, f"no setting reached {what} (best {100 * best:.1f}%)"
        return min(ok, key=lambda i: (rows[i].mean_tokens, -rows[i].accuracy)), what
    if objective == "budget":
        limit = token_share * fixed_tokens
        ok = [i for i, r in enumerate(rows) if r.mean_tokens <= limit * (1 + 1e-12)]
        what = f"mean tokens <= {token_share:g} x fixed BoN's ({limit:,.0f})"
        if not ok:
            cheapest = min(r.mean_tokens for r in rows)
            return None, f"no setting had {what} on calibration (cheapest {cheapest:,.0f})"
        return max(ok, key=lambda i: (rows[i].accuracy, -rows[i].mean_tokens)), what
    gains = [r.gain_vs_envelope for r in rows]
    ok = [i for i, g in enumerate(gains) if g == g and g > 0]
    what = "a positive gain over the envelope on calibration"
    if not ok:
        finite = [g for g in gains if g == g]
        best = f"best {100 * max(finite):+.2f} pp" if finite else "every setting cheaper than any fixed method"
        return None, f"no setting had {what} ({best})"
    return max(ok, key=lambda i: (gains[i], -rows[i].mean_tokens)), what


def sweep(
    data,
    policy: str,
    budgets: Sequence[int],
    s_mins: Sequence[float] | None = None,
    alphas: Sequence[float] | None = None,
    settings: dict | None = None,
    calib_fraction: float = 0.5,
    seed: int = 0,
    objective: str = "match",
    on_progress: Callable[[int, int], None] | None = None,
    *,
    grid: Mapping[str, Sequence] | None = None,
    target: float | None = None,
    token_share: float = 0.5,
    splits: int = 1,
    bootstrap: int = 2000,
    jobs: int = 1,
    backend: str = "loky",
) -> SweepResult:
    """Replay the grid on every problem of ``data`` (a batch or an ordered pool), then per split
    seed (``seed``, ``seed + 1``, ...) select per budget on the calibration split (see the module).

    With ``jobs`` > 1 the problems are replayed in ``jobs`` runs, and the statistics of each (split
    seed, half) computed, in parallel on ``backend`` (:mod:`optscale.replay.parallel`); each run gets
    its problems' rows of ``data`` (compact arrays, not the pool re-read), and the result is the
    serial one, bit for bit. ``on_progress`` then counts finished runs instead of (chunk, policy) steps."""
    pairs = check_sweep(policy, budgets, s_mins, alphas, settings, calib_fraction, seed, objective, grid=grid,
                        target=target, token_share=token_share, splits=splits)
    jobs, backend = check_parallel(jobs, backend)
    keys, _ = grid_points(s_mins, alphas, grid)
    settings = dict(settings or {})
    population = _is_population(settings)
    p = (data.shape[0])
    seeds = [seed + i for i in range(splits)]
    halves = {s: dict(zip(("calibration", "held_out"), split_problems(p, calib_fraction, s))) for s in seeds}
    # Every grid point is replayed once on every problem; with a population prior, once per split seed
    # (the prior is fitted on that split's calibration problems).
    replayed = {s: _grid_policies(data, policy, pairs, settings, halves[s]["calibration"] if population else None)
                for s in (seeds if population else seeds[:1])}
    collected = _collect(data, replayed, jobs, backend, on_progress)
    own = {s: s if population else seeds[0] for s in seeds}  # the seed whose replay serves each split seed
    # the held-out half is also measured against the calibrated envelope of its split's calibration half
    units = [(replayed[own[s]], *collected[own[s]], idx, bootstrap, s, halves[s]["calibration"] if name == "held_out"
              else None) for s in seeds for name, idx in halves[s].items()]
    halves_stats = iter(run_units(_half_stats, units, jobs, backend))
    grid_rows: list[dict] = []
    per_split: list[dict] = []
    for split_seed in seeds:
        calib_idx, test_idx = halves[split_seed].values()
        stats: dict[str, list[PolicyStats]] = {}
        bon: dict[str, BonCurve] = {}
        for split in ("calibration", "held_out"):
            bon[split], stats[split] = next(halves_stats)
        selected = []
        for budget in dict.fromkeys(b for b, _ in pairs):
            cols = [i for i, (b, _) in enumerate(pairs) if b == budget]
            for split in stats:
                rows = [stats[split][i] for i in cols]
                front = pareto_mask([r.mean_tokens for r in rows], [r.accuracy for r in rows])
                for i, r, on_front in zip(cols, rows, front):
                    grid_rows.append({"split_seed": split_seed, "split": split, "budget": budget,
                                      **{k: r.settings.get(k, pairs[i][1][k]) for k in keys},
                                      "pareto": bool(on_front), **_flat(r)})
            calib = [stats["calibration"][i] for i in cols]
            goal, fixed_tokens = _target_and_share(bon["calibration"], budget, target)
            i, what = choose(calib, objective, goal, fixed_tokens, token_share)
            entry: dict[str, Any] = {"budget": budget, "met": i is not None, "objective": objective,
                                     "reason": what if i is not None else f"nothing met the objective: {what}",
                                     "target": goal if objective in ("match", "match-bon") else None}
            if i is None:
                entry.update({"settings": None, **{k: None for k in keys}, "calibration": None, "held_out": None})
            else:
                col = cols[i]
                chosen = {k: stats["calibration"][col].settings.get(k, pairs[col][1][k]) for k in keys}
                entry.update({"settings": chosen, **chosen, "calibration": stats["calibration"][col],
                              "held_out": stats["held_out"][col]})
            selected.append(entry)
        per_split.append({"seed": split_seed, "calib_problems": len(calib_idx), "test_problems": len(test_idx),
                          "selected": selected, "curves": bon})
    first = per_split[0]
    return SweepResult(policy, objective, grid_rows, first["selected"], first["curves"]["calibration"],
                       first["curves"]["held_out"], first["calib_problems"], first["test_problems"], keys,
                       [{k: v for k, v in s.items() if k != "curves"} for s in per_split],
                       _summary(per_split), target, token_share)


def _grid_policies(data, policy: str, pairs: list[tuple[int, dict]], settings: dict, calib_idx) -> list:
    """The grid's policies; ``calib_idx`` given: with a population prior fitted on those problems."""
    extra = {"priors": _population_prior(data, calib_idx)} if calib_idx is not None else {}
    return [make_policy(policy, b, **{**settings, **extra, **point}) for b, point in pairs]


def _collect(data, replayed: dict[int, list], jobs: int, backend: str,
             on_progress: Callable[[int, int], None] | None) -> dict[int, tuple[FixedCurves, list[ReplayOutcome]]]:
    """Per split seed of ``replayed`` (its policies): the fixed-N curves and each policy's outcome.

    On ``jobs`` > 1 the problems are cut into ``jobs`` runs of consecutive problems, each replayed
    with every policy in parallel (so fits shared by settings are still made once per problem),
    and the runs put back together in problem order.
    """
    if jobs == 1:
        calls = [0]

        def progress(done: int, total: int) -> None:
            if on_progress is not None:
                on_progress(calls[0] * total + done, total * len(replayed))

        out = {}
        for split_seed, pols in replayed.items():
            out[split_seed] = collect(data, pols, progress)
            calls[0] += 1
        return out
    runs = _runs(data, jobs)
    done = iter(run_units(_replay_run, [(pols, *run) for pols in replayed.values() for run in runs], jobs, backend,
                          on_progress))
    out = {}
    for split_seed, pols in replayed.items():
        parts = [next(done) for _ in runs]
        out[split_seed] = (FixedCurves.concat([curves for curves, _ in parts]),
                           [ReplayOutcome.concat([outcomes[i] for _, outcomes in parts]) for i in range(len(pols))])
    return out


def _runs(data, parts: int) -> list[tuple]:
    """``data`` (an ordered pool or a batch) as up to ``parts`` runs of consecutive problems, for :func:`_replay_run`.

    A policy decides each problem from its own samples only, so a run replays its problems exactly
    as the whole does; a pool's run carries its first problem's place, where its sample orders
    continue the pool's random stream (each problem draws ``orders x width`` numbers, in pool order).
    """
    p = data.shape[0]
    bounds = [p * k // parts for k in range(parts + 1)]
    rows = [np.arange(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]
    if isinstance(data, OrderedPool):
        return [(data.arrays.take(r), data.orders, data.seed, int(r[0]), data.chunk_cells) for r in rows]
    return [(subset(data, r),) for r in rows]


def _replay_run(policies: list, source, orders: int | None = None, seed: int = 0, first: int = 0,
                chunk_cells: int = 0) -> tuple[FixedCurves, list[ReplayOutcome]]:
    """:func:`collect` on one run of :func:`_runs`: a batch, or pool arrays whose orders start at problem ``first``."""
    if orders is not None:
        bits = np.random.PCG64(seed)  # what default_rng(seed) draws from, moved past the problems before the run
        bits.advance(first * orders * source.width)
        source = OrderedPool(source, orders, bits, chunk_cells)
    return collect(source, policies)


def _half_stats(pols: list, curves: FixedCurves, outcomes: list[ReplayOutcome], idx: np.ndarray, bootstrap: int,
                split_seed: int, calib_idx: np.ndarray | None = None) -> tuple[BonCurve, list[PolicyStats]]:
    """The Best-of-N curve and every policy's statistics on the problems ``idx`` of one split (with
    ``calib_idx``: also against the calibrated envelope of those problems)."""
    baseline = Baseline(curves.take(idx), bootstrap, split_seed)
    calibration = None if calib_idx is None else Baseline(curves.take(calib_idx), bootstrap, split_seed)
    bon = baseline.curves.bon()
    return bon, policy_stats(pols, [o.take(idx) for o in outcomes], baseline, bon, calibration)


def _summary(per_split: list[dict]) -> list[dict]:
    """Per budget over split seeds: how often the objective was met, held-out mean and range, wins."""
    out = []
    for j, entry in enumerate(per_split[0]["selected"]):
        held = [s["selected"][j]["held_out"] for s in per_split if s["selected"][j]["met"]]
        row: dict[str, Any] = {"budget": entry["budget"], "splits": len(per_split), "met": len(held)}
        for name in ("accuracy", "mean_tokens", "token_savings", "gain_vs_envelope", "gain_vs_calibrated_envelope",
                     "gain_vs_bon_curve"):
            values = np.array([getattr(h, name) for h in held], dtype=float)
            finite = values[np.isfinite(values)]
            row[f"{name}_mean"] = float(finite.mean()) if finite.size else float("nan")
            row[f"{name}_min"] = float(finite.min()) if finite.size else float("nan")
            row[f"{name}_max"] = float(finite.max()) if finite.size else float("nan")
        row["beats_envelope"] = sum(bool(h.gain_vs_envelope > TIE) for h in held)  # point estimate above it
        row["beats_envelope_ci"] = sum(bool(h.beats_envelope) for h in held)  # whole 95% interval above it
        # the same over the calibrated envelope (the fixed methods chosen on the split's calibration half)
        row["beats_calibrated_envelope"] = sum(bool(h.gain_vs_calibrated_envelope > TIE) for h in held)
        out.append(row)
    return out


def _flat(stats: PolicyStats) -> dict:
    d = stats.as_dict()
    d.pop("settings")
    return d
