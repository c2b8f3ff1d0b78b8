"""The README's main job: simulate a pool, tune on a calibration split, compare every policy.

Runs in well under a minute on 2 cores. The pool follows real per-problem PRM score
statistics (see :mod:`optscale.simulate`). OptScale^t gets priors from a *simulated*
predictor, the true per-problem parameters plus noise of a stated size, because simulated
problems have no text a real predictor could read; the report says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .compose import build_policy
from .errors import InputError
from .io import ensure_out_dir, write_jsonl, write_text
from .replay import build_batch, check_orders, check_seed, replay_policies, split_problems, subset, sweep
from .replay.engine import ReplayResult

BUDGETS = (8, 16, 32, 64)
S_MIN_GRID = (0.85, 0.9, 0.95, 0.975)
ALPHA_GRID = (0.5, 0.7, 0.9, 0.95)
TUNED = ("optscale0", "optscale-t", "optscale")
BASELINES = ("bon", "sc", "esc", "asc")
PRIOR_NOISE = 0.05  # std of the simulated predictor's error on mu (and relative error on sigma)


@dataclass
class DemoSummary:
    tables: list = field(default_factory=list)
    files: list[Path] = field(default_factory=list)


def _priors_file(problems, path: Path, seed: int) -> Path:
    """A priors JSONL from a simulated predictor: true parameters with known noise."""
    rng = np.random.default_rng(seed + 1)
    rows = []
    for pr in problems:
        extra = pr.model_extra or {}
        mu = float(extra["mu"]) + rng.normal(0, PRIOR_NOISE)
        sigma = float(extra["sigma"]) * float(np.exp(rng.normal(0, PRIOR_NOISE)))
        rows.append({"id": pr.id, "mu": mu, "sigma": sigma, "width_mu": 2 * PRIOR_NOISE, "width_sigma": 2 * PRIOR_NOISE})
    write_jsonl(path, rows)
    return path


def run_demo(out: Path, problems: int = 600, samples: int = 64, orders: int = 8, seed: int = 0, progress=None) -> DemoSummary:
    """Simulate, tune, replay and write the report into ``out``.

    Bad arguments and an ``out`` that cannot be written raise :class:`~optscale.errors.InputError`
    (naming ``out``, ``orders``, ``seed``, ``n_problems``, ``n_samples``) before any work.
    """
    from .pools import PoolProblem, write_pool
    from .report import write_replay_report, write_rows
    from .simulate import check_sizes, simulate_pool

    check_sizes(problems, samples)
    if samples < min(BUDGETS):
        raise InputError(f"the demo's smallest budget is {min(BUDGETS)}; got {samples}", "n_samples")
    orders, seed = check_orders(orders), check_seed(seed)
    out = ensure_out_dir(out, "out")
    summary = DemoSummary()
    grid_points = len(S_MIN_GRID) * len(ALPHA_GRID) * sum(b <= samples for b in BUDGETS)
    task = progress.add_task("demo", total=3 + len(TUNED) * grid_points) if progress else None
    step = (lambda: progress.advance(task)) if progress else (lambda: None)

    pool = [p if isinstance(p, PoolProblem) else PoolProblem.model_validate(p)
            for p in simulate_pool(problems, samples, seed=seed)]
    write_pool(out / "pool.jsonl", pool)
    priors = _priors_file(pool, out / "priors.jsonl", seed)
    batch = build_batch(pool, orders=orders, seed=seed)
    calib_idx, test_idx = split_problems(len(pool), 0.5, seed)
    held_out = subset(batch, test_idx)
    step()

    budgets = [b for b in BUDGETS if b <= samples]
    chosen: dict[tuple[str, int], dict] = {}
    selections = []
    for name in TUNED:
        extra = {"priors": str(priors)} if name == "optscale-t" else {}
        # One sweep per policy: its fits are cached across budgets and grid points.
        res = sweep(batch, name, budgets, S_MIN_GRID, ALPHA_GRID, extra, 0.5, seed, on_point=step)
        for sel in res.selected:
            b = sel["budget"]
            chosen[(name, b)] = {**extra, "s_min": sel["s_min"], "alpha": sel["alpha"]}
            selections.append({"policy": name, "budget": b, "s_min": sel["s_min"], "alpha": sel["alpha"],
                               "calibration_accuracy": sel["calibration"].accuracy,
                               "calibration_tokens": sel["calibration"].mean_tokens})
    summary.files.append(write_rows(selections, out / "selected_settings.csv"))

    policies = []
    for b in budgets:
        policies += [build_policy(name, b) for name in BASELINES]
        policies += [build_policy(name, b, chosen[(name, b)]) for name in TUNED]
    result: ReplayResult = replay_policies(held_out, policies, dataset="simulated", seed=seed)
    step()
    summary.files += write_replay_report(out, [result])
    summary.files.append(write_text(out / "README.md", _readme(len(pool), samples, orders, len(calib_idx), len(test_idx))))
    step()
    for b in budgets:
        summary.tables.append((f"held-out problems, N_max = {b}", [s for s in result.stats if s.n_max == b]))
    return summary


def _readme(problems: int, samples: int, orders: int, calib: int, test: int) -> str:
    return f"""# optscale demo report

- Pool: `pool.jsonl`, {problems} simulated problems x {samples} samples whose per-problem score
  distributions follow the real PRM score statistics of 4,501 MATH training problems.
- Settings (s_min, alpha) of the OptScale policies were chosen per budget on {calib} calibration
  problems (`selected_settings.csv`: cheapest setting matching fixed BoN accuracy there); every number
  in `table.md` and the plots comes from the other {test} problems, each replayed in {orders} sample orders.
- OptScale^t uses `priors.jsonl`, a *simulated* predictor: the true parameters plus noise
  (std {PRIOR_NOISE} on mu, {PRIOR_NOISE:.0%} on sigma). Real priors come from `optscale predictor`.
- `table.md` also compares each policy with the whole fixed-N Best-of-N curve at the same mean tokens:
  an adaptive rule only pays if it beats the best fixed N for the same cost.
"""
