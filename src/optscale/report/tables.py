"""Result tables: CSV and Parquet for machines, Markdown and LaTeX shaped like the paper's table."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from ..errors import InputError
from ..io import atomic_open
from ..policies import POLICIES

__all__ = ["METHOD_NAMES", "write_rows", "paper_table", "baseline_table", "envelope_table", "splits_table"]

#: The paper's methods in the row order of its main table; the registry's other policies follow.
PAPER_ORDER = ("bon", "sc", "esc", "asc", "optscale0", "optscale-t", "optscale")

#: Row labels: each registered policy's ``label`` (the paper's names for the paper's methods).
METHOD_NAMES = {name: POLICIES.get(name, "policy").label or name
                for name in (*PAPER_ORDER, *(n for n in POLICIES.names() if n not in PAPER_ORDER))}


def _cell(value):
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return value


def write_rows(rows: Sequence[Mapping], path: str | Path) -> Path:
    """Write dict rows to ``.csv`` or ``.parquet`` (chosen by suffix), atomically (:func:`optscale.io.atomic_open`)."""
    path = Path(path)
    rows = [{k: _cell(v) for k, v in r.items()} for r in rows]
    if path.suffix == ".csv":
        with atomic_open(path, "w") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
            writer.writeheader()
            writer.writerows(rows)
    elif path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist(rows)
        with atomic_open(path, "wb") as handle:
            pq.write_table(table, handle)
    else:
        raise InputError("results must end in .csv or .parquet", str(path))
    return path


def _fmt_tokens(x: float) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:,.0f}"


def _fmt_acc(x: float, lo: float | None = None, hi: float | None = None) -> str:
    if x is None or math.isnan(x):
        return "-"
    if lo is None:
        return f"{100 * x:.1f}"
    return f"{100 * x:.1f} ± {100 * (hi - lo) / 2:.1f}"


def _grid(rows: Iterable[Mapping]):
    """{(method, n_max): {dataset: row}} and the dataset order."""
    cells: dict[tuple[str, int], dict[str, Mapping]] = {}
    datasets: list[str] = []
    for r in rows:
        ds = r["dataset"]
        if ds not in datasets:
            datasets.append(ds)
        cells.setdefault((r["policy"], int(r["n_max"])), {})[ds] = r
    order = {name: i for i, name in enumerate(METHOD_NAMES)}
    keys = sorted(cells, key=lambda k: (k[1], order.get(k[0], 99), k[0]))
    return keys, cells, datasets


_LATEX_SPECIAL = {c: "\\" + c for c in "&%$#_{}"} | {"~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                                                     "\\": r"\textbackslash{}"}


def _markdown_text(text: str) -> str:
    """A name as one Markdown table cell: a ``|`` or line break would split the row."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _latex_text(text: str) -> str:
    """A name as LaTeX text: ``_``, ``&``, ``%`` ... are commands or errors there."""
    return "".join(_LATEX_SPECIAL.get(c, c) for c in " ".join(str(text).split()))


def paper_table(rows: Iterable[Mapping], fmt: str = "markdown") -> str:
    """Method x budget rows, accuracy (%) and mean tokens per dataset, like the paper's Table 1.

    Accuracy carries its 95% bootstrap half-width in Markdown; LaTeX follows the paper's layout.
    Dataset and method names are escaped for the format.
    """
    keys, cells, datasets = _grid(rows)
    if fmt == "markdown":
        names = {d: _markdown_text(d) for d in datasets}
        head = "| Method | N | " + " | ".join(f"{names[d]} acc. | {names[d]} tokens" for d in datasets) + " |"
        sep = "|---|---:|" + "---:|---:|" * len(datasets)
        lines = [head, sep]
        for method, n in keys:
            parts = []
            for d in datasets:
                r = cells[(method, n)].get(d)
                parts += ([_fmt_acc(r["accuracy"], r["ci_low"], r["ci_high"]), _fmt_tokens(r["mean_tokens"])]
                          if r else ["-", "-"])
            lines.append(f"| {_markdown_text(METHOD_NAMES.get(method, method))} | {n} | " + " | ".join(parts) + " |")
        return "\n".join(lines) + "\n"
    if fmt == "latex":
        cols = "l" + "rr" * len(datasets)
        lines = [r"\begin{tabular}{" + cols + "}", r"\toprule",
                 " & " + " & ".join(rf"\multicolumn{{2}}{{c}}{{{_latex_text(d)}}}" for d in datasets) + r" \\",
                 "Method & " + " & ".join("acc. & token." for _ in datasets) + r" \\", r"\midrule"]
        last_n = None
        for method, n in keys:
            if last_n is not None and n != last_n:
                lines.append(r"\midrule")
            last_n = n
            parts = []
            for d in datasets:
                r = cells[(method, n)].get(d)
                parts += [_fmt_acc(r["accuracy"]), _fmt_tokens(r["mean_tokens"]).replace(",", "")] if r else ["-", "-"]
            label = METHOD_NAMES[method] if method in METHOD_NAMES else _latex_text(method)  # labels are LaTeX
            lines.append(f"{label} ($N={n}$) & " + " & ".join(parts) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}"]
        return "\n".join(lines) + "\n"
    raise InputError(f"unknown table format {fmt!r}", "format")


def baseline_table(rows: Iterable[Mapping]) -> str:
    """The honest comparison: each policy against the fixed-N BoN curve at its own token cost."""
    lines = [
        "| Dataset | Policy | Accuracy | Tokens | Saved vs BoN@N | BoN curve at same tokens | Gain | Best fixed N within tokens | Pr(best ≥ s_min) vs α |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        calib = "-"
        if r.get("promised_alpha") is not None:
            got = r.get("achieved_uncapped")
            calib = f"{got:.3f} vs {r['promised_alpha']:.2f}" if got is not None else f"- vs {r['promised_alpha']:.2f}"
            if r.get("misses_alpha"):
                calib += " (missed: the whole 95% interval is below α)"
        best = f"N={r['best_fixed_n']}: {_fmt_acc(r['best_fixed_accuracy'])}" if r["best_fixed_n"] else "-"
        gain = r["gain_vs_bon_curve"]
        lines.append(
            f"| {_markdown_text(r['dataset'])} | {_markdown_text(r['label'])} | "
            f"{_fmt_acc(r['accuracy'], r['ci_low'], r['ci_high'])} | "
            f"{_fmt_tokens(r['mean_tokens'])} | {100 * r['token_savings']:.1f}% | "
            f"{_fmt_acc(r['bon_accuracy_same_tokens'])} | "
            f"{'-' if math.isnan(gain) else f'{100 * gain:+.1f}'} | {best} | {calib} |"
        )
    return "\n".join(lines) + "\n"


def _finite(x) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def _pp(x) -> str:
    return f"{100 * x:+.1f}" if _finite(x) else "-"


def envelope_table(rows: Iterable[Mapping]) -> str:
    """The honest comparison: each policy against the envelope of every fixed-N method at its own tokens.

    The envelope mixes fixed methods (N <= N_max; best score, majority or score-weighted vote) at
    random per problem; the gain carries its paired bootstrap 95% interval over problems. Where the
    rows were measured with a calibration set (held-out halves), a last column gives the gain over
    its calibrated envelope (the fixed methods chosen on the calibration problems).
    """
    rows = list(rows)
    calibrated = any(_finite(r.get("gain_vs_calibrated_envelope")) for r in rows)
    lines = [
        "| Dataset | Policy | Accuracy | Tokens | Envelope at same tokens | Gain (pp) [95% paired] | Envelope mixture "
        "| Best fixed method within tokens | Tokens / envelope's best | Gain vs BoN curve (pp) |"
        + " Gain vs calibrated envelope (pp) [95% paired] |" * calibrated,
        "|---|---|---:|---:|---:|---:|---|---:|---:|---:|" + "---:|" * calibrated,
    ]
    for r in rows:
        env = r.get("envelope_accuracy_same_tokens")
        gain = "-" if env is None or math.isnan(env) else (
            f"{_pp(r['gain_vs_envelope'])} [{_pp(r['gain_vs_envelope_ci_low'])}, {_pp(r['gain_vs_envelope_ci_high'])}]")
        best = f"{r['best_fixed_method']}: {_fmt_acc(r['best_fixed_method_accuracy'])}" if r.get("best_fixed_method") else "-"
        share = r.get("token_share_of_envelope_best")
        share = "-" if share is None or math.isnan(share) else (
            f"{100 * share:.0f}% of {r['envelope_best_method']} ({_fmt_acc(r['envelope_best_accuracy'])})")
        lines.append(
            f"| {_markdown_text(r['dataset'])} | {_markdown_text(r['label'])} | "
            f"{_fmt_acc(r['accuracy'], r['ci_low'], r['ci_high'])} | "
            f"{_fmt_tokens(r['mean_tokens'])} | {_fmt_acc(env)} | {gain} | {r.get('envelope_mix') or '-'} | {best} | "
            f"{share} | {_pp(r['gain_vs_bon_curve'])} |"
            + (f" {_pp(r['gain_vs_calibrated_envelope'])} [{_pp(r['gain_vs_calibrated_envelope_ci_low'])}, "
               f"{_pp(r['gain_vs_calibrated_envelope_ci_high'])}] |" if _finite(r.get("gain_vs_calibrated_envelope"))
               else " - |") * calibrated
        )
    return "\n".join(lines) + "\n"


def splits_table(summary: Iterable[Mapping]) -> str:
    """A sweep over several split seeds: per budget, held-out mean and range, and wins over the envelope."""
    lines = ["| N_max | Objective met | Accuracy mean [range] | Tokens mean | Gain vs envelope (pp) mean [range] "
             "| Beats envelope | Whole 95% interval above | Gain vs calibrated envelope (pp) mean [range] "
             "| Beats calibrated envelope |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in summary:
        def rng(key):
            if r[f"{key}_mean"] is None or math.isnan(r[f"{key}_mean"]):
                return "-"
            return f"{100 * r[f'{key}_mean']:.1f} [{100 * r[f'{key}_min']:.1f}, {100 * r[f'{key}_max']:.1f}]"
        lines.append(f"| {r['budget']} | {r['met']}/{r['splits']} | {rng('accuracy')} | {_fmt_tokens(r['mean_tokens_mean'])} "
                     f"| {rng('gain_vs_envelope')} | {r['beats_envelope']}/{r['splits']} | "
                     f"{r['beats_envelope_ci']}/{r['splits']} | {rng('gain_vs_calibrated_envelope')} | "
                     f"{r['beats_calibrated_envelope']}/{r['splits']} |")
    return "\n".join(lines) + "\n"
