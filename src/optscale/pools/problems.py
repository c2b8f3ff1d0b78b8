"""Problem files: local JSON / JSON Lines / CSV files (``.gz`` too), or Hugging Face ``datasets`` names.

The one reader of a file of problems, whoever reads it: live runs and pools sample its
problems (:mod:`optscale.live`), the predictor predicts their priors
(:meth:`optscale.predictor.Problems.from_file`), so a problem has the same id everywhere and
a priors file matches the run it is made for.

Every row needs a question; the gold answer is optional (without it nothing is graded). A
GSM8K-style worked solution ending in ``#### 18`` is reduced to its final answer. Ids must be
unique because a resumed run finds its samples by problem id; an id keeps its JSON value as
text (``0``, ``"0"``, ``false``: :func:`problem_id`), and rows without one get ``<file
stem>/<row number>``. Files are read through :mod:`optscale.io`, so a bad byte or a bad line
is reported as ``file:line``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..errors import InputError
from ..io import numbered_lines, parse_json, read_text

__all__ = ["LiveProblem", "DatasetSpec", "load_problems", "problem_id"]

_READERS = (".jsonl", ".ndjson", ".json", ".csv")


@dataclass(frozen=True)
class LiveProblem:
    """One question to answer, with its gold answer when known, and the row's other fields (``extra``)."""

    id: str
    question: str
    answer: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)


class DatasetSpec(BaseModel):
    """Where the problems come from and which slice of them to use."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str = Field(min_length=1, description="problems: a .jsonl/.json/.csv file (also .gz) with question "
                                                  "and answer fields, or a Hugging Face dataset name")
    question_field: str = Field("question", min_length=1, description="field holding the question")
    answer_field: str = Field("answer", min_length=1, description="field holding the gold answer")
    id_field: str = Field("id", min_length=1, description="field holding the problem id")
    split: str = Field("test", description="Hugging Face split")
    subset: str | None = Field(None, description="Hugging Face configuration, e.g. main")
    offset: int = Field(0, ge=0, description="skip this many problems first")
    limit: int | None = Field(None, ge=1, description="use at most this many problems")

    def __init__(self, *args: Any, **values: Any) -> None:
        """Positional arguments in field order (``DatasetSpec("gsm8k.jsonl", "problem")``), as before."""
        if len(args) > len(type(self).model_fields):
            raise TypeError(f"DatasetSpec takes at most {len(type(self).model_fields)} positional arguments")
        values.update(zip(type(self).model_fields, args))
        super().__init__(**values)


def _gold(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value)
    if "####" in text:
        text = text.rsplit("####", 1)[1]
    return text.strip() or None


def problem_id(value: Any, where: str) -> str | None:
    """An id as text, keeping its value (``0``, ``"0"``, ``false``); None when the row has none."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, int, float)):
        return json.dumps(value)
    raise InputError(f"an id must be a string or a number, got {type(value).__name__}", where)


def _rows_jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    for number, line in numbered_lines(path):
        if line.strip():
            where = f"{path}:{number}"
            yield where, parse_json(line, where)


def _rows_json(path: Path) -> Iterator[tuple[str, Any]]:
    data = parse_json(read_text(path), str(path))
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
    reader = csv.DictReader(line for _, line in numbered_lines(path))
    try:
        for row in reader:
            yield f"{path}:{reader.line_num}", row
    except csv.Error as exc:
        raise InputError(f"malformed CSV: {exc}", f"{path}:{reader.line_num}") from None


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


def _file_kind(path: Path) -> str:
    """The format suffix, looking through a ``.gz`` (``p.jsonl.gz`` is JSON Lines)."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    return suffixes[-1] if suffixes else ""


def load_problems(spec: DatasetSpec) -> list[LiveProblem]:
    """The problems of ``spec``, validated; any bad row raises :class:`InputError` naming it."""
    path = Path(spec.source).expanduser()
    if path.is_file():
        kind = _file_kind(path)
        if kind not in _READERS:
            raise InputError("unsupported dataset file; use .jsonl, .json or .csv (optionally .gz)", str(path))
        readers = {".jsonl": _rows_jsonl, ".ndjson": _rows_jsonl, ".json": _rows_json, ".csv": _rows_csv}
        rows: Iterator[tuple[str, Any]] = readers[kind](path)
        stem = Path(path.name[:-3] if path.name.lower().endswith(".gz") else path.name).stem
    elif path.exists() or spec.source.endswith(tuple(_READERS) + tuple(s + ".gz" for s in _READERS)):
        raise InputError("dataset file not found" if not path.exists() else "not a regular file", spec.source)
    else:
        rows = _rows_hub(spec)
        stem = spec.source.rsplit("/", 1)[-1]
    problems: list[LiveProblem] = []
    seen: dict[str, str] = {}
    count = 0
    for number, (where, row) in enumerate(rows):
        count = number + 1
        if number < spec.offset:
            continue
        if spec.limit is not None and len(problems) >= spec.limit:
            break
        if not isinstance(row, dict):
            raise InputError("expected an object with a question", where)
        pid = problem_id(row.get(spec.id_field), where) or f"{stem}/{number}"
        question = row.get(spec.question_field)
        if not isinstance(question, str) or not question.strip():
            raise InputError(f"problem {pid!r} has no {spec.question_field!r} text", where)
        if pid in seen:
            raise InputError(f"problem id {pid!r} repeats {seen[pid]}", where)
        seen[pid] = where
        extra = {k: v for k, v in row.items() if k not in (spec.id_field, spec.question_field, spec.answer_field)}
        problems.append(LiveProblem(pid, question, _gold(row.get(spec.answer_field)), extra))
    if not problems and count:
        raise InputError(f"skips {spec.offset} problems, but {spec.source} has only {count}", "offset")
    if not problems:
        raise InputError("no problems in it", spec.source)
    return problems
