"""Offline commands: replay, sweep, demo and nstar."""

from __future__ import annotations

import json
import math
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .. import defaults
from ..errors import InputError
from ..io import check_out_file, ensure_out_dir, write_text
from ..policies import POLICIES  # command modules load only when their command runs (see commands.py)
from ..policies.optscale import DEFAULT_TARGET
from .flags import flags

# Wide enough for the comparison table when output goes to a file or pipe (rich assumes 80).
console = Console(width=None if sys.stdout.isatty() else 150)

DEFAULT_S_MIN, DEFAULT_ALPHA = (",".join(f"{v:g}" for v in grid) for grid in (defaults.S_MIN_GRID, defaults.ALPHA_GRID))

PolicyOpt = Annotated[str, typer.Option("--policy", "-p", help=", ".join(POLICIES))]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="policy setting key=value, repeatable (e.g. s_min=0.9, alpha=0.8, peek=5); `optscale policy settings` lists each policy's")]
OrdersOpt = Annotated[int, typer.Option("--orders", "-r", help="sample orders per problem; order 1 is the pool's own, the others seeded shuffles")]
SeedOpt = Annotated[int, typer.Option("--seed", help="seed of the shuffled orders, bootstrap and splits")]
LabelsOpt = Annotated[str, typer.Option("--labels", help="where a sample's 'correct' comes from: gold (graded against "
                                        "its problem's gold answer) or consensus (its answer equals the policy's "
                                        "selection rule's answer on the problem's first N_max samples: no gold "
                                        "needed, e.g. a traffic folder; see docs/policies.md)")]
PoolArg = "completion pool (JSON Lines, one problem per line), or a traffic folder (optscale serve --traffic-dir)"
JobsOpt = Annotated[int, typer.Option("--jobs", "-j", help="parallel jobs (1: one after another in this process); the "
                                      "results are the same, bit for bit")]
BackendOpt = Annotated[str, typer.Option("--backend", help="where --jobs run: loky (processes on this machine), ray "
                                         "(extra ray; RAY_ADDRESS or a local Ray) or dask (extra dask; "
                                         "DASK_SCHEDULER_ADDRESS or a local cluster)")]


@contextmanager
def progress_bar(quiet: bool = False):
    """A rich progress bar on stderr (hidden with --json so stdout stays machine-readable)."""
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), disable=quiet, transient=quiet) as bar:
        yield bar


#: Library names -> flags, one table per command (see :func:`optscale.cli.flags.flags`).
_POLICY_FLAGS = {"policy": "--policy", "settings": "--set", "settings.": "--set ", "orders": "--orders", "seed": "--seed",
                 "out": "--out", "labels": "--labels", "select": "--set select", "jobs": "--jobs", "backend": "--backend"}
REPLAY_FLAGS = {**_POLICY_FLAGS, "n_max": "--n-max"}
SWEEP_FLAGS = {**_POLICY_FLAGS, "budgets": "--n-max", "n_max": "--n-max", "s_mins": "--s-min", "alphas": "--alpha",
               "calib_fraction": "--calib-fraction", "objective": "--objective", "target": "--target",
               "token_share": "--token-share", "splits": "--splits", "grid": "--grid", "grid.": "--grid "}
NSTAR_FLAGS = {"mu": "--mu", "sigma": "--sigma", "s_min": "--s-min", "alpha": "--alpha", "n_max": "--n-max"}
DEMO_FLAGS = {"out": "--out", "n_problems": "--problems", "n_samples": "--samples", "orders": "--orders", "seed": "--seed"}


def _floats(text: str, name: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"expected comma-separated numbers, got {text!r}", name) from None
    if not values:
        raise InputError("needs at least one value", name)
    if not all(math.isfinite(v) for v in values):
        raise InputError(f"expected comma-separated finite numbers, got {text!r}", name)
    return values


def _ints(text: str, name: str) -> list[int]:
    values = _floats(text, name)
    if any(v != int(v) or v < 1 for v in values):
        raise InputError(f"expected comma-separated integers >= 1, got {text!r}", name)
    return [int(v) for v in values]


def load_batch(pool: Path, orders: int, seed: int, labels: str = "gold", select: str | None = None,
               n_max: int | None = None):
    """Read, validate (and grade where needed) a pool or traffic folder line by line into compact
    arrays, labelled by ``labels`` (consensus: ``select`` on the first ``n_max`` samples, no
    grading), replayed in ``orders`` sample orders a chunk of problems at a time
    (:class:`optscale.replay.OrderedPool`)."""
    from ..replay import check_labels, read_pool_arrays, relabel

    gold = check_labels(labels) == "gold"
    arrays = read_pool_arrays(pool, grade_missing=gold, require_gold=gold)
    return relabel(arrays, labels, select, n_max).ordered(orders, seed)


def _grid(pairs: list[str] | None) -> dict[str, list[str]]:
    """``["t=0.9,0.95", "k=2,3"]`` -> ``{"t": ["0.9", "0.95"], "k": ["2", "3"]}``; the policy converts the values."""
    out: dict[str, list[str]] = {}
    for pair in pairs or []:
        key, sep, values = pair.partition("=")
        key = key.strip()
        items = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not key or not items:
            raise InputError(f"expected key=v1,v2,..., got {pair!r}", "grid")
        if key in out:
            raise InputError(f"{key} is given twice", f"grid.{key}")
        out[key] = items
    return out


def grading_note(failed: dict[str, int]) -> str | None:
    """The note on answers whose grading timed out or failed (``grading_problems``), None if none did."""
    parts = [f"timed out on {failed['timeouts']}"] if failed["timeouts"] else []
    parts += [f"failed on {failed['errors']}"] if failed["errors"] else []
    return f"grading {' and '.join(parts)} answer(s); they count as wrong" if parts else None


def _pool_notes(batch, n_max: int | None, failed: dict[str, int]) -> list[str]:
    """What the reader of a replay must know about the pool: a budget it cannot fill, grading timeouts and errors."""
    notes = []
    most = batch.shape[2]
    if n_max is not None and n_max > most:
        notes.append(f"--n-max {n_max} exceeds the pool's {most} samples per problem at most: the policy is "
                     f"replayed on what is stored, so @{n_max} spends at most {most}")
    note = grading_note(failed)
    return notes + ([note] if note else [])


def read_checked(pool: Path, orders: int, seed: int, n_max: int | None = None, labels: str = "gold",
                 select: str | None = None, label_n_max: int | None = None):
    """:func:`load_batch`, the notes on what was read (warnings), and for consensus labels (``select``
    over ``label_n_max`` samples, default ``n_max``) what they measure."""
    from ..answers.grade import COUNTS, grading_problems
    from ..replay import labels_note

    before = COUNTS.copy()
    label_n_max = label_n_max or n_max
    batch = load_batch(pool, orders, seed, labels, select, label_n_max)
    notes = _pool_notes(batch, n_max, grading_problems(before))
    return batch, notes, ([labels_note(labels, select, label_n_max)] if labels != "gold" else [])


def warn(notes: list[str]) -> None:
    for note in notes:
        typer.echo(f"warning: {note}", err=True)


def load_checked(pool: Path, orders: int, seed: int, n_max: int | None = None, labels: str = "gold",
                 select: str | None = None, label_n_max: int | None = None):
    """:func:`read_checked`, its warnings on stderr; the notes are the warnings and what the labels measure."""
    batch, notes, about = read_checked(pool, orders, seed, n_max, labels, select, label_n_max)
    warn(notes)
    return batch, notes + about


def labelled(table: Table, labels: str) -> Table:
    """``table`` whose caption says which labels its accuracy counts (consensus: agreement with full sampling)."""
    if labels == "consensus":
        table.caption = ("CONSENSUS LABELS: acc. is agreement with the selection rule's answer on all N_max samples "
                         "(no gold); " + (table.caption or ""))
    return table


def promise_note(stats) -> str:
    """What a report says when a policy broke its promise Pr(best >= s_min) >= alpha."""
    return (f"{stats.policy}@{stats.n_max} promised Pr(best >= s_min) >= {stats.promised_alpha:g} but reached "
            f"{stats.achieved_uncapped:.3f} (95% interval {stats.achieved_ci_low:.3f}-{stats.achieved_ci_high:.3f}): "
            "its score model does not fit these scores")


def _check_run(orders: int, seed: int, out: Path | None, labels: str = "gold", jobs: int = 1, backend: str = "loky",
               pools: list[Path] = ()) -> None:
    """Everything about a replay that can be wrong apart from the pools' contents, checked before reading them."""
    from ..replay import check_labels, check_orders, check_seed
    from ..replay.parallel import check_parallel

    check_labels(labels)
    check_orders(orders)
    check_seed(seed)
    check_parallel(jobs, backend)
    names: dict[str, Path] = {}
    for pool in pools:  # each pool's results are named by its file name's stem
        if names.setdefault(pool.stem, pool) != pool:
            raise InputError(f"{pool} and {names[pool.stem]} would both be reported as {pool.stem!r}: "
                             "give pools with different names", str(pool))
    if out is not None:
        ensure_out_dir(out, "out")


def replay_pool(pool: Path, policy, orders: int, seed: int, n_max: int, labels: str = "gold"):
    """One pool of ``optscale replay`` (a unit of parallel work): its result, notes, warnings, number of problems."""
    from ..replay import replay_policies

    batch, warnings, about = read_checked(pool, orders, seed, n_max, labels, getattr(policy, "select", None))
    result = replay_policies(batch, [policy], dataset=pool.stem, seed=seed, labels=labels)
    notes = warnings + about
    if result.stats[0].misses_alpha:
        notes.append(promise_note(result.stats[0]))
        warnings.append(notes[-1])
    return result, notes, warnings, batch.shape[0]


def sweep_pool(pool: Path, orders: int, seed: int, load: dict, args: tuple, options: dict):
    """One pool of ``optscale sweep`` with several pools (a unit of parallel work): its result and warnings."""
    from ..replay import sweep as run_sweep

    batch, warnings, _ = read_checked(pool, orders, seed, **load)
    return run_sweep(batch, *args, seed, **options), warnings


def _short_settings(stats) -> str:
    """The settings that differ from the policy's defaults (those its label names)."""
    shown = [f"{k}={v}" for k, v in stats.settings.items() if v is not None and f"{k}=" in stats.label]
    return " ".join(shown)


def _pp(x: float) -> str:
    return "-" if x != x else f"{100 * x:+.1f}"


#: Each column of :func:`stats_table`: what its caption says about it ("" for none).
_STATS_COLUMNS = {
    "policy": "", "settings": "",
    "acc. %": "acc. ± half-width of the 95% bootstrap interval over problems",
    "samples": "", "tokens": "",
    "saved": "saved: tokens vs fixed BoN at the same N",
    "envelope": ("envelope: best mixture of fixed-N methods (every N <= N_max, best score, majority and "
                 "score-weighted vote) at the same mean tokens"),
    "gain [95%]": "gain: accuracy minus that, with its paired 95% bootstrap interval",
    "best fixed ≤ tokens": "best fixed ≤ tokens: most accurate single fixed method costing no more (rule@N)",
    "BoN@tokens": "", "gain BoN": "BoN@tokens, gain BoN: the same against the Best-of-N curve alone",
    "hit/α": "hit/α: share whose best score reached s_min vs the promised α",
}
#: The columns of the narrow table (:func:`stats_table` with ``narrow``): it fits 100 terminal columns.
NARROW_COLUMNS = ("policy", "acc. %", "tokens", "envelope", "gain [95%]", "best fixed ≤ tokens")


def stats_table(rows, title: str, narrow: bool = False) -> Table:
    """One line per policy: accuracy with its 95% interval, cost, and the honest fixed-N comparisons;
    ``narrow`` keeps only :data:`NARROW_COLUMNS` (the report's files keep every column)."""
    columns = NARROW_COLUMNS if narrow else tuple(_STATS_COLUMNS)
    t = Table(title=title, title_justify="left")
    for col in columns:
        t.add_column(col, justify="left" if col in ("policy", "settings", "best fixed ≤ tokens") else "right",
                     no_wrap=narrow)
    for s in rows:
        calib = "-"
        if s.promised_alpha is not None and s.achieved_uncapped is not None:
            calib = f"{s.achieved_uncapped:.2f}/{s.promised_alpha:g}" + (" missed" if s.misses_alpha else "")
        same, env = s.bon_accuracy_same_tokens, s.envelope_accuracy_same_tokens
        gain = "-" if env != env else (f"{_pp(s.gain_vs_envelope)} [{_pp(s.gain_vs_envelope_ci_low)}, "
                                       f"{_pp(s.gain_vs_envelope_ci_high)}]")
        best = "-" if not s.best_fixed_method else f"{s.best_fixed_method}: {100 * s.best_fixed_method_accuracy:.1f}"
        cells = dict(zip(_STATS_COLUMNS, (
            f"{s.policy}@{s.n_max}", _short_settings(s), f"{100 * s.accuracy:.1f}±{50 * (s.ci_high - s.ci_low):.1f}",
            f"{s.mean_samples:.1f}", f"{s.mean_tokens:,.0f}", f"{100 * s.token_savings:.0f}%",
            "-" if env != env else f"{100 * env:.1f}", gain, best,
            "-" if same != same else f"{100 * same:.1f}", _pp(s.gain_vs_bon_curve), calib)))
        t.add_row(*(cells[col] for col in columns))
    t.caption = "; ".join(_STATS_COLUMNS[col] for col in columns if _STATS_COLUMNS[col])
    return t


def summary_table(best: list[dict], title: str) -> Table:
    """The report's summary (:func:`optscale.report.summary.summary_cells`) as a terminal table."""
    from rich import box

    from ..report.summary import SUMMARY_COLUMNS, SUMMARY_NOTE, summary_cells

    t = Table(title=title, title_justify="left", caption=SUMMARY_NOTE, box=box.SIMPLE_HEAD, pad_edge=False)
    for col, align in SUMMARY_COLUMNS.items():
        t.add_column(col, justify="right" if align.endswith(":") else "left")
    for b in best:
        t.add_row(*summary_cells(b))
    return t


def replay(
    pool: Annotated[list[Path], typer.Argument(help=PoolArg + "; several: one result per pool, in one report")],
    policy: PolicyOpt = defaults.POLICY,
    n_max: Annotated[int, typer.Option("--n-max", "-n", help="most samples per problem")] = defaults.N_MAX,
    settings: SetOpt = None,
    orders: OrdersOpt = defaults.ORDERS,
    seed: SeedOpt = defaults.SEED,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object instead of a table")] = False,
    out: Annotated[Optional[Path], typer.Option("--out", help="also write a report folder (tables, plots)")] = None,
    labels: LabelsOpt = "gold",
    jobs: JobsOpt = 1,
    backend: BackendOpt = "loky",
) -> None:
    """Replay one policy over a stored pool in several sample orders and compare it with fixed-N BoN.

    Also against the envelope of every fixed-N method (N <= --n-max; best score, majority and
    score-weighted vote) at the same mean tokens, with a paired bootstrap interval for the gain.
    With --labels consensus (traffic without gold) accuracy is agreement with full sampling.
    Several pools are replayed one by one, or --jobs at a time (each job reads its pool), and
    reported in argument order: a table (or a --json line) per pool, one --out report whose
    files have a row per pool (column dataset: the pool's file name without extension).
    """
    pools = pool
    with flags(REPLAY_FLAGS):
        from ..compose import build_policy
        from ..policies import parse_settings
        from ..replay.parallel import run_units

        pol = build_policy(policy, n_max, parse_settings(settings))
        _check_run(orders, seed, out, labels, jobs, backend, pools)
        done = run_units(replay_pool, [(p, pol, orders, seed, n_max, labels) for p in pools], jobs, backend)
        if out is not None:
            from ..report import write_replay_report

            write_replay_report(out, [result for result, *_ in done], s_min=getattr(pol, "s_min", None),
                                alpha=getattr(pol, "alpha", None))
    for pool, (result, notes, warnings, problems) in zip(pools, done):
        warn(warnings)
        stats = result.stats[0]
        if as_json:
            from ..report import json_ready

            typer.echo(json.dumps(json_ready({**stats.as_dict(), "dataset": result.dataset, "labels": labels,
                                               "notes": notes,
                                               "bon_curve": result.curve.rows(),
                                               "fixed_curves": result.baseline.curves.rows(),
                                               "envelope": result.envelope_rows()})))
            continue
        console.print(labelled(stats_table([stats], f"{pool.name}: {problems} problems x {orders} orders, "
                                                    f"{labels} labels"), labels))
        if stats.envelope_mix:
            console.print(f"envelope at {stats.mean_tokens:,.0f} tokens: {stats.envelope_mix}")
    if out is not None and not as_json:
        console.print(f"report written to {out}")


def sweep(
    pool: Annotated[list[Path], typer.Argument(help=PoolArg + "; several: a report per pool, in --out/<pool name>/")],
    policy: PolicyOpt = defaults.POLICY,
    n_max: Annotated[str, typer.Option("--n-max", "-n", help="budgets, comma-separated")] = ",".join(map(str, defaults.BUDGETS)),
    s_min: Annotated[Optional[str], typer.Option("--s-min", help=f"grid of target scores, comma-separated (policies with s_min; default {DEFAULT_S_MIN})")] = None,
    alpha: Annotated[Optional[str], typer.Option("--alpha", help=f"grid of probabilities, comma-separated (policies with alpha; default {DEFAULT_ALPHA})")] = None,
    grid: Annotated[Optional[list[str]], typer.Option("--grid", help="any setting's grid, key=v1,v2,..., repeatable (e.g. t=0.9,0.95 or k=2,3)")] = None,
    settings: SetOpt = None,
    orders: OrdersOpt = defaults.ORDERS,
    seed: SeedOpt = defaults.SEED,
    calib_fraction: Annotated[float, typer.Option("--calib-fraction", help="share of problems used to choose settings")] = 0.5,
    objective: Annotated[str, typer.Option("--objective", help="match: cheapest setting reaching --target on calibration; budget: most accurate within --token-share of fixed BoN's tokens; gain: largest gain over the envelope of fixed-N methods")] = "match",
    target: Annotated[Optional[float], typer.Option("--target", help="accuracy that match must reach on calibration (default: fixed BoN at the same budget there)")] = None,
    token_share: Annotated[float, typer.Option("--token-share", help="budget: most tokens, as a share of fixed BoN's at the same budget")] = 0.5,
    splits: Annotated[int, typer.Option("--splits", help="repeat the calibration/held-out split over this many seeds (--seed, --seed+1, ...)")] = 1,
    out: Annotated[Path, typer.Option("--out", help="report folder")] = Path("sweep-report"),
    labels: LabelsOpt = "gold",
    jobs: JobsOpt = 1,
    backend: BackendOpt = "loky",
) -> None:
    """Grid-search (s_min, alpha) per budget on a calibration split; report the choice on held-out problems.

    Any policy's settings can be swept with --grid. Settings are chosen on calibration problems
    only (--objective); when none meets the objective there, the output says so and nothing is
    selected for that budget. Held-out rows are compared with the envelope of every fixed-N method.
    With --labels consensus every budget is scored against the rule's answer on the largest --n-max.
    With --jobs, one pool is read once and its problems replayed in --jobs runs in parallel;
    several pools are swept --jobs at a time, each job reading its pool, each pool's report in
    --out/<pool file name without extension>/. Results equal the serial ones, bit for bit.
    """
    pools = pool
    with flags(SWEEP_FLAGS):
        from ..compose import with_default_priors
        from ..policies import POLICIES as registry
        from ..policies import parse_settings
        from ..replay import check_sweep
        from ..replay import sweep as run_sweep
        from ..replay.parallel import run_units
        from ..report import write_sweep_report

        budgets = _ints(n_max, "budgets")
        fields = registry.get(policy, "policy").model_fields
        given, fixed = _grid(grid), parse_settings(settings)
        # The default grids apply to a policy with that setting that neither --grid nor --set fixes.
        s_mins = _floats(s_min, "s_mins") if s_min is not None else (
            _floats(DEFAULT_S_MIN, "s_mins") if "s_min" in fields and not {"s_min"} & {*given, *fixed} else None)
        alphas = _floats(alpha, "alphas") if alpha is not None else (
            _floats(DEFAULT_ALPHA, "alphas") if "alpha" in fields and not {"alpha"} & {*given, *fixed} else None)
        extra = with_default_priors(policy, fixed)
        options = dict(grid=given, target=target, token_share=token_share, splits=splits)
        pairs = check_sweep(policy, budgets, s_mins, alphas, extra, calib_fraction, seed, objective,
                            **options)  # before the long run
        if labels == "consensus" and "select" in given:
            raise InputError("cannot be swept with --labels consensus: the labels follow one selection rule "
                             "(set it with --set select=RULE)", "grid.select")
        _check_run(orders, seed, out, labels, jobs, backend, pools)
        select = fixed.get("select", fields["select"].default if "select" in fields else None)
        load = dict(labels=labels, select=select, label_n_max=max(budgets))
        args, options["objective"] = (policy, budgets, s_mins, alphas, extra, calib_fraction), objective
        batch = load_checked(pools[0], orders, seed, **load)[0] if len(pools) == 1 else None
        with progress_bar() as bar:
            task = bar.add_task(f"sweep {policy} ({len(pairs)} settings)", total=None)
            update = lambda done, total: bar.update(task, completed=done, total=total)  # noqa: E731
            if batch is not None:
                done = [(run_sweep(batch, *args, seed, on_progress=update, jobs=jobs, backend=backend, **options), [])]
            else:
                done = run_units(sweep_pool, [(p, orders, seed, load, args, options) for p in pools], jobs, backend,
                                 update)
        for pool, (result, warnings) in zip(pools, done):
            warn(warnings)
            for row in result.grid:
                row["labels"] = labels
            write_sweep_report(out if len(pools) == 1 else out / pool.stem, result, pool.stem)
    for pool, (result, _) in zip(pools, done):
        _print_sweep(pool, result, labels)
    console.print(f"grid, Pareto front and plots written to {out}")


def _print_sweep(pool: Path, result, labels: str) -> None:
    met = [s["held_out"] for s in result.selected if s["met"]]
    title = (f"{pool.name}: settings chosen on {result.calib_problems} calibration problems ({result.objective}), "
             f"reported on {result.test_problems} held-out problems")
    if met:
        console.print(labelled(stats_table(met, title + f", {labels} labels"), labels))
    for s in result.selected:
        if not s["met"]:
            console.print(f"N_max {s['budget']}: {s['reason']}; nothing selected (no fallback)")
    if len(result.splits) > 1:
        console.print(splits_table(result.summary, f"{result.policy} over {len(result.splits)} split seeds "
                                                   f"(held-out numbers of each split's calibration choice)"))


def splits_table(summary: list[dict], title: str) -> Table:
    """Per budget: splits where the objective was met, held-out mean [range], wins over the envelope."""
    t = Table(title=title, title_justify="left")
    for col in ("N_max", "met", "acc. % mean [range]", "tokens mean", "gain vs envelope pp [range]",
                "beats envelope", "whole CI above", "gain vs calibrated envelope pp [range]", "beats it"):
        t.add_column(col, justify="right")
    for r in summary:
        rng = lambda k, f=100: ("-" if r[f"{k}_mean"] != r[f"{k}_mean"]  # noqa: E731
                                else f"{f * r[f'{k}_mean']:.1f} [{f * r[f'{k}_min']:.1f}, {f * r[f'{k}_max']:.1f}]")
        t.add_row(str(r["budget"]), f"{r['met']}/{r['splits']}", rng("accuracy"),
                  "-" if r["mean_tokens_mean"] != r["mean_tokens_mean"] else f"{r['mean_tokens_mean']:,.0f}",
                  rng("gain_vs_envelope"), f"{r['beats_envelope']}/{r['splits']}", f"{r['beats_envelope_ci']}/{r['splits']}",
                  rng("gain_vs_calibrated_envelope"), f"{r['beats_calibrated_envelope']}/{r['splits']}")
    return t


def nstar(
    mu: Annotated[float, typer.Option(help="untruncated mean of the score distribution")],
    sigma: Annotated[float, typer.Option(help="untruncated standard deviation (> 0; inf: uniform scores)")],
    s_min: Annotated[float, typer.Option("--s-min", help="target score")] = DEFAULT_TARGET[0],
    alpha: Annotated[float, typer.Option(help="required probability that the best sample reaches s_min")] = DEFAULT_TARGET[1],
    n_max: Annotated[Optional[int], typer.Option("--n-max", help="cap on N")] = None,
) -> None:
    """Print the least N with Pr(best of N >= s_min) >= alpha for one (mu, sigma)."""
    from ..stats import UNBOUNDED, min_samples_detail, prob_best_at_least

    with flags(NSTAR_FLAGS):
        n, capped = min_samples_detail(mu, sigma, s_min, alpha, n_max)
    n = int(n)
    if n == UNBOUNDED:
        typer.echo("N* = unbounded (the target score is unreachable)")
        return
    note = " (capped: the target needs more)" if bool(capped) else ""
    typer.echo(f"N* = {n}{note}; Pr(best of {n} >= {s_min}) = {float(prob_best_at_least(s_min, mu, sigma, n)):.4f}")


def demo(
    out: Annotated[Path, typer.Option("--out", help="report folder")] = Path("optscale-demo"),
    problems: Annotated[int, typer.Option("--problems", help="simulated problems")] = 600,
    samples: Annotated[int, typer.Option("--samples", help="samples per problem in the pool")] = 64,
    orders: OrdersOpt = defaults.DEMO_ORDERS,
    seed: SeedOpt = defaults.SEED,
) -> None:
    """Simulate a pool from real PRM score statistics, replay every policy, write a report."""
    from ..demo import run_demo

    from ..demo import check_demo

    start = time.perf_counter()
    with flags(DEMO_FLAGS):
        check_demo(out, problems, samples, orders, seed)  # before the progress bar starts
    with flags(DEMO_FLAGS), progress_bar() as bar:
        summary = run_demo(out, problems=problems, samples=samples, orders=orders, seed=seed, progress=bar)
    console.print(summary_table(summary.best, "The rule with the largest gain over the envelope at each N_max "
                                              "(held-out problems)"))
    for title, rows in summary.tables:
        console.print(stats_table(rows, title, narrow=True))
    for note in summary.notes:
        console.print(f"note: {note}")
    console.print("every column (settings, saved vs BoN@N, the Best-of-N curve, hit/α) is in table.md and results.csv")
    console.print(f"report written to {out}/ in {time.perf_counter() - start:.1f} s: "
                  + ", ".join(p.name for p in summary.files))


def table(
    results: Annotated[list[Path], typer.Argument(help="results.csv of replays or selected.csv of sweeps, one per dataset")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="markdown or latex")] = "markdown",
    out: Annotated[Optional[Path], typer.Option("--out", help="write the table to this file instead of printing it")] = None,
) -> None:
    """Combine result files into one table shaped like the paper's (method x budget, per dataset)."""
    from ..report import paper_table, read_results

    if fmt not in ("markdown", "latex"):
        raise InputError(f"unknown format {fmt!r}; use markdown or latex", "--format")
    if out is not None:
        check_out_file(out, "--out", inputs=results)
    rows = read_results(results)
    text = paper_table(rows, fmt)
    if out is None:
        typer.echo(text, nl=False)
    else:
        write_text(out, text)


def register(app: typer.Typer) -> None:
    app.command()(replay)
    app.command()(sweep)
    app.command()(demo)
    app.command()(nstar)
    app.command()(table)
