"""Build a pool from a flat table with one sample per row (JSON Lines, CSV or Parquet).

Sampling scripts usually dump one row per generated response; the pool format groups them
by problem. Rows of a problem may be scattered through the table: problems and their samples
keep the order in which they first appear. JSON Lines and CSV tables may be gzipped
(``samples.csv.gz``). Every error names ``file:N column NAME``, where ``N`` is the line for
JSON Lines and CSV (the last line of a CSV record spanning several) and the 1-based row for
Parquet.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from ..answers import extract_answer
from ..checks import is_number
from ..errors import InputError
from ..io import StrPath, check_out_file, iter_objects, numbered_lines, parse_json
from .io import validation_message, write_pool
from .schema import MAX_SAMPLES, PoolProblem, PoolSample

__all__ = ["FLAT_COLUMNS", "FlatFormat", "detect_format", "convert_flat"]

FlatFormat = Literal["jsonl", "csv", "parquet"]

FLAT_COLUMNS = (
    "id",
    "question",
    "gold",
    "answer",
    "score",
    "tokens",
    "correct",
    "text",
    "step_scores",
)
"""Our column names; ``columns`` maps any of them to the table's own names."""

_REQUIRED = ("id", "gold", "tokens")
_SUFFIXES: dict[str, FlatFormat] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_TRUE = {"true", "t", "yes", "y", "1"}
_FALSE = {"false", "f", "no", "n", "0"}


def detect_format(path: StrPath, fmt: str | None = None) -> FlatFormat:
    """``fmt`` when given (checked), else the format implied by the file's suffix (``.gz`` aside)."""
    if fmt is not None:
        if fmt not in _SUFFIXES.values():
            raise InputError(f"unknown format {fmt!r}; use jsonl, csv or parquet", where="format")
        return fmt  # type: ignore[return-value]
    name = Path(path).name.lower()
    base = name.removesuffix(".gz")
    suffix = Path(base).suffix
    kind = _SUFFIXES.get(suffix)
    if kind is None or (kind == "parquet" and base != name):
        shown = suffix + name[len(base):]
        message = f"unknown suffix {shown!r}; give the format: jsonl, csv or parquet (.gz for the first two)"
        raise InputError(message, where=os.fspath(path))
    return kind


def _csv_rows(path: StrPath) -> Iterator[tuple[str, dict[str, Any]]]:
    # Long reasoning traces exceed the csv module's default cell limit of 128 KiB.
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    name = os.fspath(path)
    reader = csv.DictReader(line for _, line in numbered_lines(path))
    for row in reader:
        yield f"{name}:{reader.line_num}", row


def _parquet_rows(path: StrPath) -> Iterator[tuple[str, dict[str, Any]]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    name = os.fspath(path)
    number = 0
    try:
        for batch in pq.ParquetFile(path).iter_batches():
            for row in batch.to_pylist():
                number += 1
                yield f"{name}:{number}", row
    except pa.ArrowException as exc:
        raise InputError(f"not a readable Parquet file: {exc}", where=name) from None


_READERS = {"jsonl": iter_objects, "csv": _csv_rows, "parquet": _parquet_rows}


def _as_text(value: Any, where: str) -> str:
    """Text cells may hold numbers (a gold answer of 18, an integer id): they become text."""
    if isinstance(value, str):
        return value
    if not is_number(value, finite=False):
        raise InputError(f"expected text, got {type(value).__name__}", where=where)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _as_number(value: Any, where: str) -> Any:
    """CSV cells are text: parse them; typed cells are left for the model to check."""
    if not isinstance(value, str):
        return value
    try:
        number = float(value)
    except ValueError:
        raise InputError(f"not a number: {value.strip()!r}", where=where) from None
    return int(number) if number.is_integer() else number


def _as_bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise InputError(f"expected true or false, got {value!r}", where=where)


def _as_list(value: Any, where: str) -> Any:
    """Step scores arrive as lists (JSON Lines, Parquet) or as a JSON list in a CSV cell."""
    if isinstance(value, str):
        try:
            value = parse_json(value, where)
        except InputError:
            raise InputError("expected a JSON list of numbers", where=where) from None
    if not isinstance(value, list):
        raise InputError(f"expected a list of numbers, got {type(value).__name__}", where=where)
    return value


@dataclass
class _Problem:
    gold: str
    gold_where: str
    question: str | None
    samples: list[PoolSample] = field(default_factory=list)


def _column_map(columns: Mapping[str, str] | None) -> dict[str, str]:
    unknown = sorted(set(columns or {}) - set(FLAT_COLUMNS))
    if unknown:
        message = f"unknown column {unknown[0]!r}; ours are {', '.join(FLAT_COLUMNS)}"
        raise InputError(message, where="columns")
    return {ours: (columns or {}).get(ours, ours) for ours in FLAT_COLUMNS}


def convert_flat(
    src: StrPath,
    dst: StrPath,
    fmt: str | None = None,
    columns: Mapping[str, str] | None = None,
) -> list[PoolProblem]:
    """Convert the flat table ``src`` to the pool ``dst`` (written atomically).

    ``columns`` maps our column names (:data:`FLAT_COLUMNS`) to the table's; other columns
    of the table are ignored. ``id``, ``gold`` and ``tokens`` must be filled in every row; a
    column named in ``columns`` must exist, the other optional ones may be missing. ``score``
    is filled in every row or in none (an answer-only pool, e.g. with no ``score`` column). A row without an answer but with a ``text`` gets the answer extracted from the
    text. One id with two different gold answers is an error. ``correct`` is stored only where
    the table gives it (the pool reader grades the rest). A ``dst`` that is not a ``.jsonl``
    file, or that names ``src`` (also through a link), is refused before anything is read.
    Returns the problems written.
    """
    if not os.fspath(dst).endswith(".jsonl"):
        raise InputError(f"a pool is written as JSON Lines: name it *.jsonl, got {os.fspath(dst)!r}", where="dst")
    check_out_file(dst, "dst", inputs=[src])
    kind = detect_format(src, fmt)
    names = _column_map(columns)
    explicit = set(columns or {})
    name = os.fspath(src)
    problems: dict[str, _Problem] = {}
    scored: list[tuple[bool, str]] = []  # whether the first row had a score, and where
    try:
        for where, row in _READERS[kind](src):
            cells: dict[str, Any] = {}
            for ours, theirs in names.items():
                value = row.get(theirs)
                if isinstance(value, str) and not value.strip():
                    value = None
                if theirs not in row and (ours in _REQUIRED or ours in explicit):
                    hint = "" if ours in explicit else f" (map yours: {ours}=NAME)"
                    raise InputError(f"no such column{hint}", where=f"{where} column {theirs}")
                if value is None and ours in _REQUIRED:
                    raise InputError("empty", where=f"{where} column {theirs}")
                cells[ours] = value
            has = cells["score"] is not None
            if not scored:
                scored.append((has, where))
            elif has != scored[0][0]:
                state = "empty" if not has else "filled"
                raise InputError(f"{state}, but not at {scored[0][1]}: score is filled in every row or in none",
                                 where=f"{where} column {names['score']}")
            _add_row(problems, cells, names, where)
    except OSError as exc:  # Parquet; the text formats report their own, located
        raise InputError(f"cannot read: {exc.strerror or exc}", where=name) from None
    except csv.Error as exc:
        raise InputError(f"malformed CSV: {exc}", where=name) from None
    if not problems:
        raise InputError("no rows", where=name)
    for key, group in problems.items():
        if len(group.samples) > MAX_SAMPLES:
            raise InputError(f"problem {key!r} has {len(group.samples):,} rows; a pool holds at most {MAX_SAMPLES:,} "
                             "samples per problem", where=name)
    pool = [
        PoolProblem(id=key, question=group.question, answer=group.gold, samples=group.samples)
        for key, group in problems.items()
    ]
    write_pool(dst, pool)
    return pool


def _add_row(
    problems: dict[str, _Problem], cells: dict[str, Any], names: dict[str, str], where: str
) -> None:
    """Validate one row's cells and add its sample to its problem."""

    def at(ours: str) -> str:
        return f"{where} column {names[ours]}"

    def optional(ours: str, parse: Callable[[Any, str], Any]) -> Any:
        value = cells[ours]
        return None if value is None else parse(value, at(ours))

    key = _as_text(cells["id"], at("id")).strip()
    gold = _as_text(cells["gold"], at("gold")).strip()
    question = optional("question", _as_text)
    text = optional("text", _as_text)
    answer = optional("answer", _as_text)
    if answer is None and text is not None:
        answer = extract_answer(text)
    sample = {
        "answer": answer.strip() if answer is not None else None,
        "score": optional("score", _as_number),
        "tokens": _as_number(cells["tokens"], at("tokens")),
        "correct": optional("correct", _as_bool),
        "text": text,
        "step_scores": optional("step_scores", _as_list),
    }
    try:
        validated = PoolSample.model_validate(sample)
    except ValidationError as exc:
        loc, message = validation_message(exc)
        raise InputError(message, where=at(loc.split("[")[0].split(".")[0])) from None
    group = problems.get(key)
    if group is None:
        problems[key] = group = _Problem(gold=gold, gold_where=where, question=question)
    elif gold != group.gold:
        message = (
            f"gold answer {gold!r} of id {key!r} differs from {group.gold!r}"
            f" given at {group.gold_where}"
        )
        raise InputError(message, where=at("gold"))
    elif group.question is None:
        group.question = question
    group.samples.append(validated)
