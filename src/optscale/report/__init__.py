"""Reports of replays and sweeps: tables (CSV, Parquet, Markdown, LaTeX) and plots (PNG)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from .plots import nstar_plot, pareto_plot
from .run import write_run_report
from .tables import METHOD_NAMES, baseline_table, paper_table, write_rows, write_text

__all__ = ["METHOD_NAMES", "baseline_table", "paper_table", "write_rows", "nstar_plot", "pareto_plot",
           "write_replay_report", "write_run_report", "write_sweep_report", "write_text"]


def _policy_rows(results) -> list[dict]:
    return [{"dataset": res.dataset, **s.as_dict()} for res in results for s in res.stats]


def write_replay_report(out: str | Path, results: Sequence, s_min: float = 0.95, alpha: float = 0.9) -> list[Path]:
    """Everything a replay produced, in one folder: tables, curves, plots and a JSON summary."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = _policy_rows(results)
    curves = [{"dataset": res.dataset, **c} for res in results for c in res.curve.rows()]
    written = [write_rows(rows, out / "results.csv"), write_rows(rows, out / "results.parquet"),
               write_rows(curves, out / "bon_curve.csv")]
    write_text(out / "table.md", "## Accuracy (%) and mean tokens per problem\n\n" + paper_table(rows)
               + "\n## Against the whole fixed-N Best-of-N curve\n\n" + baseline_table(rows))
    write_text(out / "table.tex", paper_table(rows, "latex"))
    written += [out / "table.md", out / "table.tex"]
    for res in results:
        for n_max in sorted({s.n_max for s in res.stats}):
            rows_n = [s.as_dict() for s in res.stats if s.n_max == n_max]
            curve = [c for c in res.curve.rows() if c["n"] <= 2 * n_max]
            written.append(pareto_plot(curve, rows_n, out / f"pareto_{_slug(res.dataset)}_N{n_max}.png",
                                       title=f"{res.dataset}, N_max = {n_max}: accuracy vs tokens"))
    written.append(nstar_plot(out / "nstar.png", s_min=s_min, alpha=alpha))
    write_text(out / "summary.json", json.dumps([r.to_json() for r in results], indent=2, default=float))
    written.append(out / "summary.json")
    return written


def write_sweep_report(out: str | Path, result, dataset: str) -> list[Path]:
    """Grid (with Pareto flags), the per-budget selection and its held-out numbers, and plots."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    selected_rows = []
    for sel in result.selected:
        for split in ("calibration", "held_out"):
            selected_rows.append({"dataset": dataset, "split": split, "budget": sel["budget"],
                                  "s_min": sel["s_min"], "alpha": sel["alpha"], **sel[split].as_dict()})
    written = [write_rows(result.grid, out / "grid.csv"), write_rows(result.grid, out / "grid.parquet"),
               write_rows(selected_rows, out / "selected.csv")]
    held = [r for r in selected_rows if r["split"] == "held_out"]
    write_text(
        out / "table.md",
        f"## {result.policy} on {dataset}: settings chosen on {result.calib_problems} calibration problems "
        f"({result.objective}), reported on {result.test_problems} held-out problems\n\n"
        + paper_table(held) + "\n" + baseline_table(held))
    written.append(out / "table.md")
    test_grid = [r for r in result.grid if r["split"] == "held_out"]
    written.append(pareto_plot(result.test_curve.rows(), held, out / "pareto_held_out.png",
                               title=f"{dataset} (held out): {result.policy} sweep", grid_rows=test_grid))
    return written


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
