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
from .plots import nstar_plot, pareto_plot
from .run import write_run_report
from .tables import METHOD_NAMES, baseline_table, paper_table, write_rows

__all__ = ["METHOD_NAMES", "baseline_table", "paper_table", "write_rows", "nstar_plot", "pareto_plot",
           "write_replay_report", "write_run_report", "write_sweep_report"]


def _policy_rows(results) -> list[dict]:
    return [{"dataset": res.dataset, **s.as_dict()} for res in results for s in res.stats]


def write_replay_report(out: str | Path, results: Sequence, s_min: float = 0.95, alpha: float = 0.9) -> list[Path]:
    """Everything a replay produced, in one folder: tables, curves, plots and a JSON summary.

    The files appear together or not at all; errors name ``out``.
    """
    out = Path(out)
    rows = _policy_rows(results)
    curves = [{"dataset": res.dataset, **c} for res in results for c in res.curve.rows()]
    with staged_dir(out, "out") as stage:
        names = [write_rows(rows, stage / "results.csv"), write_rows(rows, stage / "results.parquet"),
                 write_rows(curves, stage / "bon_curve.csv"),
                 write_text(stage / "table.md", "## Accuracy (%) and mean tokens per problem\n\n" + paper_table(rows)
                            + "\n## Against the whole fixed-N Best-of-N curve\n\n" + baseline_table(rows)),
                 write_text(stage / "table.tex", paper_table(rows, "latex"))]
        for res in results:
            for n_max in sorted({s.n_max for s in res.stats}):
                rows_n = [s.as_dict() for s in res.stats if s.n_max == n_max]
                curve = [c for c in res.curve.rows() if c["n"] <= 2 * n_max]
                names.append(pareto_plot(curve, rows_n, stage / f"pareto_{_slug(res.dataset)}_N{n_max}.png",
                                         title=f"{res.dataset}, N_max = {n_max}: accuracy vs tokens"))
        names.append(nstar_plot(stage / "nstar.png", s_min=s_min, alpha=alpha))
        names.append(write_json(stage / "summary.json", _json_ready([r.to_json() for r in results])))
    return [out / p.name for p in names]


def write_sweep_report(out: str | Path, result, dataset: str) -> list[Path]:
    """Grid (with Pareto flags), the per-budget selection and its held-out numbers, and plots.

    The files appear together or not at all; errors name ``out``.
    """
    out = Path(out)
    selected_rows = []
    for sel in result.selected:
        for split in ("calibration", "held_out"):
            selected_rows.append({"dataset": dataset, "split": split, "budget": sel["budget"],
                                  "s_min": sel["s_min"], "alpha": sel["alpha"], **sel[split].as_dict()})
    held = [r for r in selected_rows if r["split"] == "held_out"]
    test_grid = [r for r in result.grid if r["split"] == "held_out"]
    with staged_dir(out, "out") as stage:
        names = [write_rows(result.grid, stage / "grid.csv"), write_rows(result.grid, stage / "grid.parquet"),
                 write_rows(selected_rows, stage / "selected.csv"),
                 write_text(stage / "table.md",
                            f"## {result.policy} on {dataset}: settings chosen on {result.calib_problems} calibration "
                            f"problems ({result.objective}), reported on {result.test_problems} held-out problems\n\n"
                            + paper_table(held) + "\n" + baseline_table(held)),
                 pareto_plot(result.test_curve.rows(), held, stage / "pareto_held_out.png",
                             title=f"{dataset} (held out): {result.policy} sweep", grid_rows=test_grid)]
    return [out / p.name for p in names]


def _json_ready(value):
    """numpy scalars become plain numbers and NaN (no BoN point at that cost) null, as JSON has no NaN."""
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
