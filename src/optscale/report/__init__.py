"""Reports of replays and sweeps: tables (CSV, Parquet, Markdown, LaTeX) and plots (PNG).

A report is one set of files: it is written into a staging folder and published all at once
(:func:`optscale.io.staged_dir`), so a failure halfway leaves the previous report as it was.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from ..io import staged_dir, write_json, write_text
from .plots import frontier_plot, nstar_plot, pareto_plot
from .results import read_results, result_row
from .run import write_run_report
from .summary import best_rules, featured_rows, summary_table
from .tables import METHOD_NAMES, baseline_table, envelope_table, paper_table, splits_table, write_rows

__all__ = ["METHOD_NAMES", "baseline_table", "best_rules", "envelope_table", "paper_table", "splits_table",
           "write_rows", "frontier_plot", "nstar_plot", "pareto_plot", "json_ready", "read_results", "replay_summary",
           "result_row", "write_replay_report", "write_run_report", "write_sweep_report"]


def _policy_rows(results) -> list[dict]:
    return [{"dataset": res.dataset, **s.as_dict()} for res in results for s in res.stats]


def _envelope_rows(results) -> list[dict]:
    return [{"dataset": res.dataset, **c} for res in results for c in res.envelope_rows()]


def replay_summary(results: Sequence) -> list[dict]:
    """Per dataset and N_max of replays, the rule with the largest gain over the envelope
    (:func:`~optscale.report.summary.best_rules`): what a report's summary shows."""
    return best_rules(_policy_rows(results), _envelope_rows(results))


#: Title of the summary a report starts with.
SUMMARY_TITLE = "## The rule with the largest gain over the envelope at each N_max\n\n"


def write_replay_report(out: str | Path, results: Sequence, s_min: float | None = None,
                        alpha: float | None = None, summary: bool = False,
                        featured: Sequence[str] | None = None) -> list[Path]:
    """Everything a replay produced, in one folder: tables, curves, the envelope, plots and a JSON summary.

    ``s_min`` and ``alpha`` set the N* map (default: OptScale's default target). With ``summary``,
    ``table.md`` starts with :func:`replay_summary`. With ``featured`` (policy names), two more
    plots show every budget side by side: ``frontier.png`` the Best-of-N curve, the envelope, the
    featured policies and the three other policies with the largest gain over the envelope, and
    ``frontier-all.png`` every policy (``frontier_<dataset>...`` for several datasets).

    The files appear together or not at all; errors name ``out``.
    """
    out = Path(out)
    rows = _policy_rows(results)
    curves = [{"dataset": res.dataset, **c} for res in results for c in res.curve.rows()]
    fixed = [{"dataset": res.dataset, **c} for res in results if res.baseline for c in res.baseline.curves.rows()]
    envelope = _envelope_rows(results)
    head = SUMMARY_TITLE + summary_table(best_rules(rows, envelope)) + "\n" if summary else ""
    with staged_dir(out, "out") as stage:
        names = [write_rows(rows, stage / "results.csv"), write_rows(rows, stage / "results.parquet"),
                 write_rows(curves, stage / "bon_curve.csv"), write_rows(fixed, stage / "fixed_curves.csv"),
                 write_rows(envelope, stage / "envelope.csv"),
                 write_text(stage / "table.md", head + "## Accuracy (%) and mean tokens per problem\n\n"
                            + paper_table(rows)
                            + "\n## Against the envelope of every fixed-N method\n\n" + ENVELOPE_NOTE
                            + envelope_table(rows)
                            + "\n## Against the whole fixed-N Best-of-N curve\n\n" + baseline_table(rows)),
                 write_text(stage / "table.tex", paper_table(rows, "latex"))]
        for res in results:
            panels = _panels(res)
            for panel in panels:
                names.append(pareto_plot(panel["curve"], panel["policies"],
                                         stage / f"pareto_{_slug(res.dataset)}_N{panel['n_max']}.png",
                                         title=f"{res.dataset}, N_max = {panel['n_max']}: accuracy vs tokens",
                                         envelope_rows=panel["envelope"]))
            if featured is not None:
                suffix = "" if len(results) == 1 else f"_{_slug(res.dataset)}"
                names += _frontier_plots(res.dataset, panels, stage, featured, suffix)
        names.append(nstar_plot(stage / "nstar.png", s_min=s_min, alpha=alpha))
        names.append(write_json(stage / "summary.json", json_ready([r.to_json() for r in results])))
    return [out / p.name for p in names]


def _panels(res) -> list[dict]:
    """Per N_max of one replay: its policies' rows, the Best-of-N curve up to 2 N_max and the envelope."""
    return [{"n_max": n_max, "title": f"N_max = {n_max}",
             "policies": [s.as_dict() for s in res.stats if s.n_max == n_max],
             "curve": [c for c in res.curve.rows() if c["n"] <= 2 * n_max],
             "envelope": res.baseline.rows(n_max) if res.baseline else []}
            for n_max in sorted({s.n_max for s in res.stats})]


def _frontier_plots(dataset: str, panels: list[dict], stage: Path, featured: Sequence[str], suffix: str) -> list[Path]:
    """``frontier.png`` (featured policies and the three best others) and ``frontier-all.png`` of one replay."""
    title = f"{dataset}, accuracy vs tokens"
    chosen = [{**p, "policies": featured_rows(p["policies"], featured)} for p in panels]
    return [frontier_plot(chosen, stage / f"frontier{suffix}.png", highlight=featured,
                          title=f"{title}: {', '.join(featured)} and the 3 other rules with the largest gain over the "
                                "envelope\n(bars: paired 95% interval of the gain over the envelope)"),
            frontier_plot(panels, stage / f"frontier{suffix}-all.png", highlight=featured, intervals=None,
                          title=f"{title}: every rule (95% intervals in table.md)")]


#: How the envelope is defined, for the reports' readers.
ENVELOPE_NOTE = ("Fixed methods: N = 1..N_max samples with each selection rule (best = highest score, majority = "
                 "vote, weighted = score-weighted vote), written rule@N. Mixing two of them at random per problem "
                 "spends and earns the mixture of their means, so the envelope (the least concave non-decreasing "
                 "curve above every fixed method) is what fixed methods achieve at a policy's mean tokens. The "
                 "gain's 95% interval resamples problems, the same resample for policy and fixed methods.\n\n")


def write_sweep_report(out: str | Path, result, dataset: str) -> list[Path]:
    """Grid (with Pareto flags), the per-budget selection and its held-out numbers, the split
    summary, and plots. A budget where nothing met the objective says so in every file.

    The files appear together or not at all; errors name ``out``.
    """
    out = Path(out)
    selected_rows, unmet = [], []
    labels = result.grid[0].get("labels", "gold") if result.grid else "gold"
    splits = result.splits or [{"seed": None, "selected": result.selected}]
    for index, split in enumerate(splits):
        for sel in split["selected"]:
            head = {"dataset": dataset, "labels": labels, "split_seed": split["seed"], "budget": sel["budget"],
                    "met": sel["met"],
                    "reason": sel["reason"], **{k: sel.get(k) for k in result.grid_keys}}
            if not sel["met"]:
                selected_rows.append({**head, "split": "calibration"})
                if index == 0:
                    unmet.append(f"- N_max {sel['budget']}: {sel['reason']}; nothing selected (no fallback).")
                continue
            for part in ("calibration", "held_out"):
                selected_rows.append({**head, "split": part, **sel[part].as_dict()})
    first_seed = splits[0]["seed"]
    held = [r for r in selected_rows if r["split"] == "held_out" and r["split_seed"] == first_seed]
    test_grid = [r for r in result.grid if r["split"] == "held_out" and r.get("split_seed", first_seed) == first_seed]
    text = (f"## {result.policy} on {dataset}: settings chosen on {result.calib_problems} calibration "
            f"problems ({result.objective}), reported on {result.test_problems} held-out problems ({labels} labels)\n\n"
            + (paper_table(held) + "\n" + ENVELOPE_NOTE + envelope_table(held) + "\n" + baseline_table(held)
               if held else "")
            + ("\n**Nothing met the objective on calibration problems:**\n\n" + "\n".join(unmet) + "\n" if unmet else ""))
    if len(result.splits) > 1:
        text += (f"\n## Over {len(result.splits)} split seeds (held-out numbers of each split's choice)\n\n"
                 + splits_table(result.summary))
    with staged_dir(out, "out") as stage:
        names = [write_rows(result.grid, stage / "grid.csv"), write_rows(result.grid, stage / "grid.parquet"),
                 write_rows(selected_rows, stage / "selected.csv"), write_text(stage / "table.md", text)]
        if result.summary:
            names.append(write_rows(result.summary, stage / "splits.csv"))
        names.append(pareto_plot(result.test_curve.rows(), held, stage / "pareto_held_out.png",
                                 title=f"{dataset} (held out): {result.policy} sweep", grid_rows=test_grid))
    return [out / p.name for p in names]


def json_ready(value):
    """numpy scalars become plain numbers and NaN (no BoN point at that cost) null, as JSON has no NaN."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
