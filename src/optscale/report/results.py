"""Result files read back: the ``results.csv`` of replays and the ``selected.csv`` of sweeps.

``optscale table`` combines them into one paper-style table (:func:`~optscale.report.paper_table`).
Every field is checked and every defect names ``file:line field NAME``; of a sweep only the
held-out rows of its first split are read (what its own ``table.md`` shows), and one cell
(dataset, policy, N) given twice with different numbers is refused rather than one of them
silently vanishing.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping

from ..errors import InputError
from ..io import StrPath, numbered_lines
from ..policies.common import N_MAX_LIMIT

__all__ = ["MAX_FIELD_CHARS", "read_results", "result_row"]

#: Longest text of one field: result files are small tables, not a place for whole documents.
MAX_FIELD_CHARS = 200


def result_row(row: Mapping[str, str | None], where: str) -> dict:
    """One results row (CSV text cells), every field checked: ``where field NAME`` names what is wrong."""

    def field(name: str) -> str:
        value = row.get(name)
        if value is None or not value.strip():
            raise InputError("missing or empty", f"{where} field {name}")
        if len(value) > MAX_FIELD_CHARS:
            raise InputError(f"longer than {MAX_FIELD_CHARS} characters ({len(value)})", f"{where} field {name}")
        return value.strip()

    def number(name: str, low: float, high: float, what: str) -> float:
        try:
            value = float(field(name))
        except ValueError:
            raise InputError(f"expected a number, got {row[name]!r}", f"{where} field {name}") from None
        if not (math.isfinite(value) and low <= value <= high):
            raise InputError(f"must be {what}, got {row[name]!r}", f"{where} field {name}")
        return value

    text = field("n_max")
    if not (text.isascii() and text.isdigit() and len(text) <= 9 and 1 <= int(text) <= N_MAX_LIMIT):
        raise InputError(f"must be an integer from 1 to {N_MAX_LIMIT}, got {text[:20]!r}", f"{where} field n_max")
    return {"dataset": field("dataset"), "policy": field("policy"), "n_max": int(text),
            **{k: number(k, 0.0, 1.0, "a share from 0 to 1") for k in ("accuracy", "ci_low", "ci_high")},
            "mean_tokens": number("mean_tokens", 0.0, math.inf, "a finite number >= 0")}


def read_results(paths: Iterable[StrPath]) -> list[dict]:
    """The checked rows (:func:`result_row`) of result files, in file order."""
    rows: list[dict] = []
    seen: dict[tuple, tuple[str, dict]] = {}
    for path in paths:
        reader = csv.DictReader(line for _, line in numbered_lines(path))
        count, first_seed = 0, None
        for row in reader:
            count += 1
            if row.get("split", "held_out") != "held_out":
                continue  # sweeps: report held-out numbers only
            first_seed = row.get("split_seed") if first_seed is None else first_seed
            if row.get("split_seed") != first_seed:
                continue  # a sweep with --splits: its first split, as its own table.md shows
            where = f"{path}:{reader.line_num}"
            result = result_row(row, where)
            key = tuple(result[k] for k in ("dataset", "policy", "n_max"))
            if key in seen and seen[key][1] != result:  # one table cell: one of them would silently vanish
                raise InputError(f"dataset {key[0]!r}, policy {key[1]!r}, N {key[2]} is also at {seen[key][0]} "
                                 "with other numbers; give each result once", where)
            seen.setdefault(key, (where, result))
            rows.append(result)
        if not count:
            raise InputError("no result rows (expected the results.csv of a replay or the selected.csv of a sweep)",
                             str(path))
    return rows
