"""Report of a live run folder: accuracy, cost, savings against the budget, why problems stopped.

It reads the folder in the layout the run store writes (:class:`optscale.live.runs.RunFolder`):
the budget ``n_max`` from the stored identity, the problems from ``problems.jsonl``. A token
count that the server never reported (prompt tokens of llama.cpp streams, every count of a
server that sends neither usage nor logprobs) is reported as unknown (null), never as 0.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io import staged_dir
from .plots import pyplot, save_figure

__all__ = ["write_run_report"]


def _known_total(rows: list[dict], key: str) -> int | None:
    """The sum of ``key`` over all rows, or None when any row does not know it."""
    values = [r.get(key) for r in rows]
    if any(not isinstance(v, int) or isinstance(v, bool) or v < 0 for v in values):
        return None
    return sum(values)


def write_run_report(run_dir: str | Path, n_max: int | None = None) -> list[Path]:
    """Summarise ``problems.jsonl`` of a run into ``report/summary.json``, ``table.md`` and a plot.

    The three files appear together or not at all. ``n_max`` defaults to the run's stored budget.
    """
    # Imported here: the live package needs the live extra, the rest of the reports do not.
    from ..live.runs import RunFolder

    folder = RunFolder(run_dir)
    if not folder.problems.exists():
        raise InputError("no problems.jsonl: the run has not finished any problem", str(folder.path))
    rows = list(folder.finished())
    if not rows:
        raise InputError("no finished problems", str(folder.problems))
    if n_max is None:
        n_max = folder.n_max()
    samples = np.array([r.get("n_samples", 0) for r in rows], dtype=float)
    tokens = np.array([r.get("tokens", 0) for r in rows], dtype=float)
    uncounted = sum(int(r.get("tokens_unknown") or 0) for r in rows)  # responses logged as 0 tokens, unknown
    prompt_tokens = _known_total(rows, "prompt_tokens")
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
        "mean_samples": float(samples.mean()),
        "mean_tokens": None if uncounted else float(tokens.mean()),
        "total_tokens": None if uncounted else float(tokens.sum()),
        "uncounted_responses": uncounted,
        "total_prompt_tokens": prompt_tokens,
        "n_max": n_max, "samples_saved_vs_budget": None if n_max is None else float(1 - samples.mean() / n_max),
        "stop_reasons": dict(Counter(str(r.get("stop_reason")) for r in rows)),
        # chosen answers counted wrong because grading timed out or math-verify failed on them
        "grading_timeouts": sum(r.get("grade_status") == "timeout" for r in rows),
        "grading_errors": sum(r.get("grade_status") == "error" for r in rows),
    }
    acc = "-" if accuracy is None else f"{100 * accuracy:.1f}% [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"
    saved = "-" if n_max is None else f"{100 * summary['samples_saved_vs_budget']:.1f}% of {n_max} per problem"
    prompt = "unknown" if prompt_tokens is None else f"{prompt_tokens:,}"
    mean_tokens = f"unknown ({uncounted} responses uncounted)" if uncounted else f"{tokens.mean():,.0f}"
    reasons = ", ".join(f"{k}: {v}" for k, v in summary["stop_reasons"].items())
    names = ["summary.json", "table.md", "samples.png"]
    with staged_dir(folder.report, replace=True) as staging:  # the run folder is optscale's own
        (staging / names[0]).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        (staging / names[1]).write_text(
            "| problems | accuracy (95% CI) | mean samples | mean tokens | prompt tokens | samples saved vs budget "
            "| stop reasons |\n|---:|---:|---:|---:|---:|---:|---|\n"
            f"| {len(rows)} | {acc} | {samples.mean():.2f} | {mean_tokens} | {prompt} | {saved} | {reasons} |\n",
            encoding="utf-8")
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(6, 4))
        top = int(max(samples.max(), n_max or 0))
        ax.hist(samples, bins=np.arange(0.5, top + 1.5), color="tab:blue")
        ax.set_xlabel("samples drawn per problem")
        ax.set_ylabel("problems")
        ax.set_title("How many samples each problem needed")
        save_figure(fig, staging / names[2], dpi=120)
    return [folder.report / name for name in names]
