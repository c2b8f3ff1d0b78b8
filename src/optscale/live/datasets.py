"""Problems to sample: local JSON / JSON Lines / CSV files, or Hugging Face ``datasets`` names.

Every row needs a question; the gold answer is optional (without it nothing is graded). A
GSM8K-style worked solution ending in ``#### 18`` is reduced to its final answer. Ids must be
unique because a resumed run finds its samples by problem id; rows without an id get
``<file stem>/<row number>``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError

__all__ = ["LiveProblem", "DatasetSpec", "load_problems"]


@dataclass(frozen=True)
class LiveProblem:
    """One question to answer, with its gold answer when known."""

    id: str
    question: str
    answer: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class DatasetSpec:
    """Where the problems come from and which slice of them to use."""

    source: str
    question_field: str = "question"
    answer_field: str = "answer"
    id_field: str = "id"
    split: str = "test"
    subset: str | None = None
    offset: int = 0
    limit: int | None = None


def _gold(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value)
    if "####" in text:
        text = text.rsplit("####", 1)[1]
    return text.strip() or None


def _rows_jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield f"{path}:{number}", json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"not valid JSON ({exc.msg})", f"{path}:{number}") from None


def _rows_json(path: Path) -> Iterator[tuple[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"not valid JSON ({exc.msg} at line {exc.lineno})", str(path)) from None
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise InputError("expected a list of problems (or an object holding exactly one list)", str(path))
        data = lists[0]
    if not isinstance(data, list):
        raise InputError("expected a list of problems", str(path))
    for number, row in enumerate(data):
        yield f"{path}[{number}]", row


def _rows_csv(path: Path) -> Iterator[tuple[str, Any]]:
    with path.open(encoding="utf-8", newline="") as f:
        for number, row in enumerate(csv.DictReader(f), 2):
            yield f"{path}:{number}", row


def _rows_hub(spec: DatasetSpec) -> Iterator[tuple[str, Any]]:
    try:
        import datasets
    except ImportError:
        raise InputError("no such file; loading it as a Hugging Face dataset needs the `datasets` package "
                         "(pip install datasets)", spec.source) from None
    try:
        rows = datasets.load_dataset(spec.source, spec.subset, split=spec.split)
    except Exception as exc:  # the hub client raises many unrelated types
        raise InputError(f"cannot load it from the Hugging Face hub ({type(exc).__name__}: {exc})",
                         spec.source) from None
    for number, row in enumerate(rows):
        yield f"{spec.source}[{spec.split}][{number}]", row


def load_problems(spec: DatasetSpec) -> list[LiveProblem]:
    """The problems of ``spec``, validated; any bad row raises :class:`InputError` naming it."""
    path = Path(spec.source).expanduser()
    if path.is_file():
        suffix = path.suffix.lower()
        readers = {".jsonl": _rows_jsonl, ".ndjson": _rows_jsonl, ".json": _rows_json, ".csv": _rows_csv}
        if suffix not in readers:
            raise InputError("unsupported dataset file; use .jsonl, .json or .csv", str(path))
        rows: Iterator[tuple[str, Any]] = readers[suffix](path)
        stem = path.stem
    elif path.exists() or spec.source.endswith((".jsonl", ".json", ".csv")):
        raise InputError("dataset file not found", spec.source)
    else:
        rows = _rows_hub(spec)
        stem = spec.source.rsplit("/", 1)[-1]
    if spec.offset < 0 or (spec.limit is not None and spec.limit < 1):
        raise InputError("offset must be >= 0 and limit >= 1", "--limit")
    problems: list[LiveProblem] = []
    seen: dict[str, str] = {}
    for number, (where, row) in enumerate(rows):
        if number < spec.offset:
            continue
        if spec.limit is not None and len(problems) >= spec.limit:
            break
        if not isinstance(row, dict):
            raise InputError("expected an object with a question", where)
        pid = str(row.get(spec.id_field) or f"{stem}/{number}")
        question = row.get(spec.question_field)
        if not isinstance(question, str) or not question.strip():
            raise InputError(f"problem {pid!r} has no {spec.question_field!r} text", where)
        if pid in seen:
            raise InputError(f"problem id {pid!r} repeats {seen[pid]}", where)
        seen[pid] = where
        extra = {k: v for k, v in row.items() if k not in (spec.id_field, spec.question_field, spec.answer_field)}
        problems.append(LiveProblem(pid, question, _gold(row.get(spec.answer_field)), extra))
    if not problems:
        raise InputError("no problems selected", spec.source)
    return problems
