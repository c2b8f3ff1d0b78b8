"""``optscale convert`` and ``optscale validate``: build a pool and check it before replay."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..answers.grade import COUNTS, grading_problems
from ..errors import InputError
from ..pools import FLAT_COLUMNS, convert_flat, iter_pool
from .flags import flags

#: Library names -> flags of ``convert`` (see :func:`optscale.cli.flags.flags`).
CONVERT_FLAGS = {"src": "SRC", "dst": "DST", "format": "--format", "columns": "--column"}


def register(app: typer.Typer) -> None:
    """Add the pool commands to the root app."""
    app.command("convert")(convert)
    app.command("validate")(validate)


def _column_pairs(pairs: list[str]) -> dict[str, str]:
    """``["gold=solution", ...]`` -> ``{"gold": "solution", ...}``."""
    mapping: dict[str, str] = {}
    for pair in pairs:
        ours, sep, theirs = pair.partition("=")
        if not sep or not ours.strip() or not theirs.strip():
            raise InputError(f"expected OURS=THEIRS, got {pair!r}", where="columns")
        mapping[ours.strip()] = theirs.strip()
    return mapping


def convert(
    src: Annotated[
        Path, typer.Argument(help="Flat table, one sample per row: .jsonl, .csv or .parquet (.jsonl.gz, .csv.gz too).")
    ],
    dst: Annotated[Path, typer.Argument(help="Pool to write (JSON Lines, one problem per line).")],
    fmt: Annotated[
        str | None,
        typer.Option("--format", "-f", help="jsonl, csv or parquet; default: from SRC's suffix."),
    ] = None,
    column: Annotated[
        list[str] | None,
        typer.Option(
            "--column",
            "-c",
            help=f"OURS=THEIRS, repeatable; our columns: {', '.join(FLAT_COLUMNS)}.",
        ),
    ] = None,
) -> None:
    """Convert a flat table of samples into a completion pool."""
    with flags(CONVERT_FLAGS):
        pool = convert_flat(src, dst, fmt=fmt, columns=_column_pairs(column or []))
    samples = sum(len(problem.samples) for problem in pool)
    message = f"wrote {len(pool)} problems, {samples} samples to {dst}"
    Console().print(message, highlight=False, markup=False)


def _percent(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "n/a"


def validate(
    pool: Annotated[Path, typer.Argument(help="Pool to check (JSON Lines, gzipped when it ends in .gz), or a "
                                              "traffic folder (optscale serve --traffic-dir).")],
    grade: Annotated[
        bool,
        typer.Option(help="Grade samples without 'correct' using math-verify (slow on big pools)."),
    ] = True,
) -> None:
    """Check a pool line by line (stopping at the first error) and summarise it.

    Problems without a gold answer (traffic) are valid; the summary says how many there are,
    since such a pool is replayed and fitted with --labels consensus only.
    """
    counts: list[int] = []
    with_answer = tokens = graded = with_gold = 0
    accuracy = 0.0
    before = COUNTS.copy()
    for problem in iter_pool(pool, grade_missing=grade, require_gold=False):
        counts.append(len(problem.samples))
        with_gold += problem.answer is not None
        with_answer += sum(sample.answer is not None for sample in problem.samples)
        tokens += sum(sample.tokens for sample in problem.samples)
        known = [sample.correct for sample in problem.samples if sample.correct is not None]
        if known:
            # Mean share of correct samples: what Best-of-1 scores, the baseline to beat.
            accuracy += sum(known) / len(known)
            graded += 1
    samples = sum(counts)
    table = Table(title=Text(f"{pool}: valid pool"), show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("problems", str(len(counts)))
    table.add_row("samples", str(samples))
    table.add_row(
        "samples per problem (min / median / max)",
        f"{min(counts)} / {statistics.median(counts):g} / {max(counts)}",
    )
    table.add_row("samples with an answer", _percent(with_answer, samples)
                  + (" (nothing to agree on: --labels consensus refuses it)" if not with_answer else ""))
    if with_gold < len(counts):  # traffic: say what it can be used with
        table.add_row("problems with a gold answer",
                      f"{with_gold} of {len(counts)} (the others: use --labels consensus)")
    if graded < len(counts):
        coverage = f" (over the {graded} problems with graded samples)"
    else:
        coverage = ""
    table.add_row("accuracy of a random sample", _percent(accuracy, graded) + coverage)
    if grade:
        failed = grading_problems(before)
        table.add_row("answers whose grading timed out (counted wrong)", str(failed["timeouts"]))
        table.add_row("answers whose grading failed (counted wrong)", str(failed["errors"]))
    table.add_row("mean tokens per sample", f"{tokens / samples:.1f}")
    Console().print(table)
