"""Report of a live run folder: accuracy, cost, savings against the budget, why problems stopped."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io import iter_objects
from .plots import pyplot, save_figure

__all__ = ["write_run_report"]


def _n_max(config: dict) -> int | None:
    for holder in (config, config.get("policy", {}) if isinstance(config.get("policy"), dict) else {}):
        value = holder.get("n_max")
        if isinstance(value, int) and value >= 1:
            return value
    return None


def write_run_report(run_dir: str | Path, n_max: int | None = None) -> list[Path]:
    """Summarise ``problems.jsonl`` of a run into ``report/summary.json``, ``table.md`` and a plot."""
    run_dir = Path(run_dir)
    path = run_dir / "problems.jsonl"
    if not path.exists():
        raise InputError("no problems.jsonl: the run has not finished any problem", str(run_dir))
    rows = [row for _, row in iter_objects(path)]
    if not rows:
        raise InputError("no finished problems", str(path))
    config_path = run_dir / "config.json"
    if n_max is None and config_path.exists():
        n_max = _n_max(json.loads(config_path.read_text(encoding="utf-8")))
    samples = np.array([r.get("n_samples", 0) for r in rows], dtype=float)
    tokens = np.array([r.get("tokens", 0) for r in rows], dtype=float)
    graded = [bool(r["correct"]) for r in rows if r.get("correct") is not None]
    accuracy = float(np.mean(graded)) if graded else None
    ci = None
    if graded:
        rng = np.random.default_rng(0)
        g = np.array(graded, dtype=float)
        boots = g[rng.integers(0, g.size, (2000, g.size))].mean(axis=1)
        ci = [float(x) for x in np.quantile(boots, [0.025, 0.975])]
    summary = {
        "problems": len(rows), "graded": len(graded), "accuracy": accuracy, "accuracy_ci95": ci,
        "mean_samples": float(samples.mean()), "mean_tokens": float(tokens.mean()), "total_tokens": float(tokens.sum()),
        "n_max": n_max, "samples_saved_vs_budget": None if n_max is None else float(1 - samples.mean() / n_max),
        "stop_reasons": dict(Counter(str(r.get("stop_reason")) for r in rows)),
    }
    out = run_dir / "report"
    out.mkdir(exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    acc = "-" if accuracy is None else f"{100 * accuracy:.1f}% [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"
    saved = "-" if n_max is None else f"{100 * summary['samples_saved_vs_budget']:.1f}% of {n_max} per problem"
    reasons = ", ".join(f"{k}: {v}" for k, v in summary["stop_reasons"].items())
    (out / "table.md").write_text(
        "| problems | accuracy (95% CI) | mean samples | mean tokens | samples saved vs budget | stop reasons |\n"
        "|---:|---:|---:|---:|---:|---|\n"
        f"| {len(rows)} | {acc} | {samples.mean():.2f} | {tokens.mean():,.0f} | {saved} | {reasons} |\n",
        encoding="utf-8")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    top = int(max(samples.max(), n_max or 0))
    ax.hist(samples, bins=np.arange(0.5, top + 1.5), color="tab:blue")
    ax.set_xlabel("samples drawn per problem")
    ax.set_ylabel("problems")
    ax.set_title("How many samples each problem needed")
    save_figure(fig, out / "samples.png", dpi=120)
    return [out / "summary.json", out / "table.md", out / "samples.png"]
