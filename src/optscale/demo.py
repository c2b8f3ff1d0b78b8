"""The README's main job: simulate a pool, tune on a calibration split, compare every policy.

Every policy in the registry is replayed on held-out problems and compared with the envelope
of every fixed-N method at its own mean tokens; OptScale's (s_min, alpha) are chosen on the
calibration half first, and where no setting matches fixed BoN there the report says so and
shows the policy at its defaults. ``learned`` is fitted on the calibration half, one table per
budget, by the function ``optscale policy fit`` calls, with that command's default flags (its
cross-validated search), at the tokens of :data:`LEARNED_SAMPLES` samples per problem
(``--budget LEARNED_SAMPLES/N_max``); its tables are written into the report folder. Policies
that still cannot run without extra input are listed as skipped. The report starts with a
summary: per budget, the rule with the largest gain over the envelope
(:mod:`optscale.report.summary`). Runs in about a minute on 2 cores. The pool follows real
per-problem PRM score statistics (see :mod:`optscale.simulate`). OptScale^t gets priors from a *simulated*
predictor, the true per-problem parameters plus noise of a stated size, because simulated
problems have no text a real predictor could read; the report says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import defaults
from .compose import build_policy
from .errors import InputError
from .io import claim_outputs, ensure_out_dir, write_jsonl, write_text
from .replay import build_batch, check_orders, check_seed, replay_policies, split_problems, subset, sweep
from .replay.engine import ReplayResult

BUDGETS, S_MIN_GRID, ALPHA_GRID = defaults.BUDGETS, defaults.DEMO_S_MIN_GRID, defaults.DEMO_ALPHA_GRID
TUNED = ("optscale0", "optscale-t", "optscale")
BASELINES = ("bon", "sc", "esc", "asc")  # listed first; the registry's other policies follow at their defaults
PRIOR_NOISE = 0.05  # std of the simulated predictor's error on mu (and relative error on sigma)
#: Files the demo writes into ``out`` itself (and :func:`learned_table_name` of each budget); the
#: report's files are claimed by its staged write.
FILES = ("pool.jsonl", "priors.jsonl", "selected_settings.csv", "README.md")
#: ``learned``'s budget: the calibration mean tokens of this many samples per problem (``--budget k/N_max``).
LEARNED_SAMPLES = 4


def learned_table_name(n_max: int) -> str:
    """The file of the ``learned`` table the demo fits for budget ``n_max``."""
    return f"learned-table-N{n_max}.json"


@dataclass
class DemoSummary:
    tables: list = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # unmet objectives and skipped policies
    best: list[dict] = field(default_factory=list)  # per budget, the rule with the largest gain over the envelope


def _others(budget: int) -> tuple[list, list[str]]:
    """The registry's policies beyond the tuned ones and the baselines, at their defaults; those that
    need more than a name and a budget (a table, a file) are skipped with the reason."""
    from .policies import POLICIES

    built, skipped = [], []
    for name in POLICIES.names():
        if name in TUNED or name in BASELINES or name == "learned":
            continue
        try:
            built.append(build_policy(name, budget))
        except InputError as exc:
            skipped.append(f"{name}: {exc}")
    return built, skipped


def _learned_tables(calib, budgets: list[int], out: Path, source: dict, seed: int) -> dict[int, Path]:
    """A ``learned`` table per budget, fitted on the calibration batch by the function ``optscale
    policy fit`` calls, with that command's defaults (its cross-validated search; ``seed`` as its
    --seed), and written into ``out``."""
    from .policies.learned.cv import fit_auto  # what `policy fit` calls

    paths = {}
    for b in budgets:
        table = fit_auto(calib, b, budget=min(1.0, LEARNED_SAMPLES / b), source=source, seed=seed)
        paths[b] = table.save(out / learned_table_name(b))
    return paths


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


def check_demo(out: Path, problems: int, samples: int, orders: int, seed: int) -> tuple[Path, int, int]:
    """Every argument of :func:`run_demo` checked, and ``out`` created and proven writable, before any
    work; errors name ``n_problems``, ``n_samples``, ``orders``, ``seed`` or ``out``. The demo's own
    files are claimed in ``out`` (:func:`~optscale.io.claim_outputs`): a user's ``README.md`` or
    ``pool.jsonl`` there is refused, never overwritten."""
    from .simulate import check_sizes

    check_sizes(problems, samples)
    if problems < 2:
        raise InputError(f"the demo splits problems into a calibration and a held-out half: needs at least 2, "
                         f"got {problems}", "n_problems")
    if samples < min(BUDGETS):
        raise InputError(f"the demo's smallest budget is {min(BUDGETS)}; got {samples}", "n_samples")
    orders, seed = check_orders(orders), check_seed(seed)
    out = ensure_out_dir(out, "out")
    claim_outputs(out, [*FILES, *map(learned_table_name, _budgets(samples))], "out")
    return out, orders, seed


def _budgets(samples: int) -> list[int]:
    return [b for b in BUDGETS if b <= samples]


def run_demo(out: Path, problems: int = 600, samples: int = 64, orders: int = defaults.DEMO_ORDERS,
             seed: int = defaults.SEED, progress=None) -> DemoSummary:
    """Simulate, tune, replay and write the report into ``out``.

    Bad arguments and an ``out`` that cannot be written raise :class:`~optscale.errors.InputError`
    (naming ``out``, ``orders``, ``seed``, ``n_problems``, ``n_samples``) before any work.
    """
    from .pools import PoolProblem, pool_sha256, write_pool
    from .report import replay_summary, write_replay_report, write_rows
    from .simulate import simulate_pool

    out, orders, seed = check_demo(out, problems, samples, orders, seed)
    summary = DemoSummary()
    task = progress.add_task("demo", total=4 + len(TUNED)) if progress else None
    step = (lambda: progress.advance(task)) if progress else (lambda: None)

    pool = [p if isinstance(p, PoolProblem) else PoolProblem.model_validate(p)
            for p in simulate_pool(problems, samples, seed=seed)]
    write_pool(out / "pool.jsonl", pool)
    priors = _priors_file(pool, out / "priors.jsonl", seed)
    batch = build_batch(pool, orders=orders, seed=seed)
    calib_idx, test_idx = split_problems(len(pool), 0.5, seed)
    held_out = subset(batch, test_idx)
    step()

    budgets = _budgets(samples)
    chosen: dict[tuple[str, int], dict] = {}
    selections = []
    for name in TUNED:
        extra = {"priors": str(priors)} if name == "optscale-t" else {}
        # One sweep per policy: its fits are cached across budgets and grid points.
        res = sweep(batch, name, budgets, S_MIN_GRID, ALPHA_GRID, extra, 0.5, seed, objective="match")
        step()
        for sel in res.selected:
            b = sel["budget"]
            if sel["met"]:
                chosen[(name, b)] = {**extra, "s_min": sel["s_min"], "alpha": sel["alpha"]}
            else:
                chosen[(name, b)] = extra
                summary.notes.append(f"{name}@{b}: {sel['reason']}; shown at its default settings")
            selections.append({"policy": name, "budget": b, "met": sel["met"], "reason": sel["reason"],
                               "s_min": sel["s_min"], "alpha": sel["alpha"],
                               "calibration_accuracy": sel["calibration"].accuracy if sel["met"] else None,
                               "calibration_tokens": sel["calibration"].mean_tokens if sel["met"] else None})
    summary.files.append(write_rows(selections, out / "selected_settings.csv"))
    tables = _learned_tables(subset(batch, calib_idx), budgets, out,
                             {"pool": "pool.jsonl", "sha256": pool_sha256(out / "pool.jsonl")}, seed)
    summary.files += tables.values()
    step()

    policies = []
    for b in budgets:
        policies += [build_policy(name, b) for name in BASELINES]
        policies += [build_policy(name, b, chosen[(name, b)]) for name in TUNED]
        policies.append(build_policy("learned", b, {"table": str(tables[b])}))
        others, skipped = _others(b)
        policies += others
    summary.notes += [f"skipped {line}" for line in skipped]
    result: ReplayResult = replay_policies(held_out, policies, dataset="simulated", seed=seed,
                                           calibration=subset(batch, calib_idx))
    step()
    summary.files += write_replay_report(out, [result], summary=True, featured=["learned"])
    summary.best = replay_summary([result])
    summary.files.append(write_text(out / "README.md", _readme(len(pool), samples, orders, len(calib_idx), len(test_idx),
                                                               summary.notes)))
    step()
    for b in budgets:
        summary.tables.append((f"held-out problems, N_max = {b}", [s for s in result.stats if s.n_max == b]))
    return summary


def _readme(problems: int, samples: int, orders: int, calib: int, test: int, notes: list[str]) -> str:
    noted = "".join(f"\n  - {n}" for n in notes)
    return f"""# optscale demo report

- Pool: `pool.jsonl`, {problems} simulated problems x {samples} samples whose per-problem score
  distributions follow the real PRM score statistics of 4,501 MATH training problems.
- Settings (s_min, alpha) of the OptScale policies were chosen per budget on {calib} calibration
  problems (`selected_settings.csv`: cheapest setting matching fixed BoN accuracy there); every number
  in `table.md` and the plots comes from the other {test} problems, each replayed in {orders} sample orders.
- `learned` uses `learned-table-N<N_max>.json`, one stopping table per budget fitted on the same
  {calib} calibration problems as `optscale policy fit` fits it with its default flags (selection rule,
  state features and shrinkage chosen by cross-validation), at `--budget {LEARNED_SAMPLES}/N_max`
  (the tokens of {LEARNED_SAMPLES} samples per problem on calibration problems).
  A table refuses the problems it was fitted on, so it cannot be replayed on the whole `pool.jsonl`.
- OptScale^t uses `priors.jsonl`, a *simulated* predictor: the true parameters plus noise
  (std {PRIOR_NOISE} on mu, {PRIOR_NOISE:.0%} on sigma). Real priors come from `optscale predictor`.
- `table.md` starts with a summary: per N_max, the rule with the largest gain over the envelope
  (below), its accuracy with its 95% interval, and its tokens as a share of the cheapest fixed
  method (or mixture of two) as accurate as it, or "no fixed method reaches it".
- `frontier.png`: accuracy vs tokens at every N_max, with the Best-of-N curve, the envelope,
  `learned` and the three other rules with the largest gain; `frontier-all.png` shows every rule,
  and `pareto_simulated_N<N_max>.png` each budget on its own.
- `table.md` compares each policy with the envelope of every fixed-N method (N <= N_max samples,
  each returned by best score, majority vote or score-weighted vote, and random mixtures of two
  of them) at the same mean tokens, with a paired bootstrap 95% interval for the gain, and names the
  best single fixed method within the same tokens; the comparison with the Best-of-N curve alone
  is kept beside it. An adaptive rule only pays if it beats every fixed method for the same cost.
- The other policies run at their default settings.
- Notes:{noted or " none"}
"""
