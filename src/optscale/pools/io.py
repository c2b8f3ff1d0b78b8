"""Read and write completion pools (JSON Lines).

Pools can hold many thousands of long responses, so reading streams one line at a time
(``.gz`` pools transparently, through :mod:`optscale.io`), and every problem in the file is
reported as ``file:LINE field NAME`` so that it can be found and fixed. Writing is atomic
(:func:`optscale.io.atomic_open`): an interrupted or failed write never leaves a half-written
pool behind.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..answers import grade
from ..errors import InputError
from ..io import StrPath, atomic_open, numbered_lines, parse_json
from .schema import PoolProblem

__all__ = ["TRAFFIC_PATTERNS", "iter_pool", "pool_files", "pool_sha256", "read_pool", "write_pool", "format_loc",
           "validation_message"]

log = logging.getLogger(__name__)

#: The files of a traffic folder (``optscale serve --traffic-dir``): open ones, then rotated and gzipped ones.
TRAFFIC_PATTERNS = ("traffic-*.jsonl", "traffic-*.jsonl.gz")


def format_loc(loc: Iterable[str | int]) -> str:
    """``("samples", 3, "score")`` -> ``samples[3].score``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def validation_message(error: ValidationError) -> tuple[str, str]:
    """The field and a short message for the first error of ``error`` (its count if several)."""
    first = error.errors(include_url=False)[0]
    if first["type"] == "missing":
        message = "missing"
    else:
        value = repr(first["input"])
        value = value if len(value) <= 40 else value[:37] + "..."
        message = f"{first['msg']} (got {value})"
    if error.error_count() > 1:
        message += f"; and {error.error_count() - 1} more error(s)"
    return format_loc(first["loc"]), message


def _nonfinite_field(value: Any, loc: tuple[str | int, ...] = ()) -> tuple[str | int, ...] | None:
    """Where ``value`` holds NaN or Infinity, which ``json.loads`` accepts but JSON forbids."""
    if isinstance(value, float):
        return None if math.isfinite(value) else loc
    if isinstance(value, dict):
        items: Iterable[tuple[str | int, Any]] = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = _nonfinite_field(item, (*loc, key))
        if found is not None:
            return found
    return None


def pool_files(path: StrPath) -> list[Path]:
    """The files a pool argument stands for: a file itself, or every ``traffic-*.jsonl`` and
    ``traffic-*.jsonl.gz`` of a folder (a traffic folder), sorted by name.

    A file that the server has gzipped but not yet removed (both ``X.jsonl`` and ``X.jsonl.gz``)
    is read once, from the ``.gz``. A folder without such files raises :class:`InputError` naming it.
    """
    folder = Path(path)
    if not folder.is_dir():
        return [folder]
    found = {f for pattern in TRAFFIC_PATTERNS for f in folder.glob(pattern) if f.is_file()}
    files = sorted((f for f in found if f.with_name(f.name + ".gz") not in found), key=lambda f: f.name)
    if not files:
        raise InputError(f"not a regular file, and not a traffic folder: it holds no "
                         f"{' or '.join(TRAFFIC_PATTERNS)} files", os.fspath(path))
    return files


def pool_sha256(path: StrPath) -> str:
    """sha256 identity of a pool: of the file's bytes, or for a traffic folder of each of its
    :func:`pool_files` in order (name, size and bytes), so that any change to the folder's pool changes it."""
    import hashlib

    digest = hashlib.sha256()
    folder = Path(path).is_dir()
    for file in pool_files(path):
        file = _current(file) if folder else file
        try:
            with open(file, "rb") as handle:
                if folder:
                    digest.update(f"{file.name}\0{os.fstat(handle.fileno()).st_size}\0".encode())
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        except OSError as exc:
            raise InputError(f"cannot read: {exc.strerror or exc}", os.fspath(file)) from None
    return digest.hexdigest()


def _current(path: Path) -> Path:
    """A traffic file, or its ``.gz`` when the server rotated (gzipped and removed) it since the folder was listed."""
    gz = path.with_name(path.name + ".gz")
    return gz if path.suffix != ".gz" and not path.exists() and gz.is_file() else path


def _objects(path: Path, traffic: bool) -> Iterator[tuple[str, Any]]:
    """``(where, value)`` of each non-blank line of one file.

    In a traffic folder (``traffic``) the file being written when the server stopped may end in
    a partial line (a crash): an unreadable last line of an uncompressed file that has no final
    newline is skipped with one warning naming ``file:line``. Every other bad line is an error.
    """
    path = _current(path) if traffic else path
    name = os.fspath(path)
    try:
        for lineno, line in numbered_lines(path):
            if line.strip():
                yield f"{name}:{lineno}", parse_json(line, f"{name}:{lineno}")
    except InputError as exc:
        last = _unterminated_last_line(path) if traffic else None
        if last is None or exc.where != f"{name}:{last}":
            raise
        log.warning("%s: skipped a partially written last line (%s): the server stopped while writing it",
                    exc.where, exc.detail)


def _unterminated_last_line(path: Path) -> int | None:
    """The number of the last line of an uncompressed file that does not end in a newline, else None."""
    if path.suffix == ".gz":
        return None
    lines, last = 1, b"\n"
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            lines += block.count(b"\n")
            last = block[-1:]
    return None if last == b"\n" else lines


def _place(where: str, file: str) -> str:
    """``FILE:LINE rest`` as ``line LINE rest`` when it is in ``file``, the line being read."""
    return "line " + where[len(file) + 1:] if where.startswith(file + ":") else where


def iter_pool(path: StrPath, grade_missing: bool = True, require_gold: bool = True) -> Iterator[PoolProblem]:
    """Validated problems of the pool at ``path``, one line at a time.

    ``path`` is a pool file or a traffic folder (``optscale serve --traffic-dir``): then every
    file of :func:`pool_files` is read in one pass, in name order, as one pool; ids are unique
    across the files (a repeat names both places), and a partially written last line of an
    uncompressed file (a crash) is skipped with a logged warning naming ``file:line``.

    Traffic holds no gold answers: ``answer`` may be null or absent. With ``require_gold``
    (labels from gold answers) a problem without one whose samples lack ``correct`` is refused,
    naming its ``answer`` field and pointing to consensus labels
    (:func:`optscale.replay.consensus_labels`); without it such samples stay ungraded.

    Raises :class:`InputError` naming ``path:LINE`` and the field for malformed JSON, a
    line that is not an object, a number out of range (token counts above 2**53 - 1), NaN or Infinity, missing fields, wrong types, scores outside
    [0, 1], an empty ``samples`` list, a repeated id (naming the first line too) and a file
    with no problems. Blank lines are skipped. Samples without ``correct`` are graded
    against the gold answer when ``grade_missing``; an answer whose grading times out or fails
    counts as wrong, is logged with its ``path:LINE samples[J]`` and is counted
    (:func:`optscale.answers.grade.grading_problems`).

    ``score`` is optional (answer-only pools), but a pool has a score on every sample or on
    none: the first sample that differs from the pool's first is refused, naming both.
    """
    name = os.fspath(path)
    first_line: dict[str, tuple[str, int]] = {}  # id -> (file, line)
    scored: tuple[bool, str] | None = None  # whether the pool's first sample has a score, and where
    expected = "a JSON object (one problem per line)"
    traffic = Path(path).is_dir()
    for where, obj in (item for file in pool_files(path) for item in _objects(file, traffic)):
        if not isinstance(obj, dict):
            raise InputError(f"expected {expected}, got {type(obj).__name__}", where)
        file, _, lineno = where.rpartition(":")
        file = sys.intern(file)  # one string per file, however many ids it holds
        bad = _nonfinite_field(obj)
        if bad is not None:
            message = "NaN and Infinity are not valid JSON numbers"
            raise InputError(message, where=f"{where} field {format_loc(bad)}")
        try:
            problem = PoolProblem.model_validate(obj)
        except ValidationError as exc:
            field, message = validation_message(exc)
            raise InputError(message, where=f"{where} field {field}") from None
        if problem.id in first_line:
            first = _place("%s:%d" % first_line[problem.id], file)
            raise InputError(f"duplicate id {problem.id!r} (first on {first})", where=f"{where} field id")
        first_line[problem.id] = (file, int(lineno))
        for j, sample in enumerate(problem.samples):
            has = sample.score is not None
            if scored is None:
                scored = (has, f"{where} samples[{j}]")
            elif has != scored[0]:
                state = "present" if has else "missing"
                other = "has one" if scored[0] else "has none"
                raise InputError(f"{state}, but {_place(scored[1], file)} {other}: a pool has a score on every "
                                 "sample or on none",
                                 where=f"{where} field samples[{j}].score")
        ungraded = any(sample.correct is None for sample in problem.samples)
        if problem.answer is None and ungraded and require_gold:
            raise InputError("gold answer missing (null or absent, as in traffic), so its samples cannot be graded; "
                             "use labels='consensus' (--labels consensus): a sample counts as correct when it "
                             "agrees with the answer of all N_max samples", where=f"{where} field answer")
        if grade_missing and problem.answer is not None and ungraded:
            for j, sample in enumerate(problem.samples):
                if sample.correct is None:
                    sample.correct = grade(problem.answer, sample.answer, where=f"{where} samples[{j}]")
        yield problem
    if not first_line:
        raise InputError("empty pool: no problems", where=name)


def read_pool(path: StrPath, grade_missing: bool = True, require_gold: bool = True) -> list[PoolProblem]:
    """All problems of a pool; see :func:`iter_pool`."""
    return list(iter_pool(path, grade_missing=grade_missing, require_gold=require_gold))


def write_pool(path: StrPath, problems: Iterable[PoolProblem]) -> int:
    """Write ``problems`` as a pool at ``path`` atomically and return how many were written.

    On any failure (an unserialisable value, NaN, a full disk) an existing pool is left
    untouched (see :func:`optscale.io.atomic_open`); its permissions are kept.
    """
    count = 0
    with atomic_open(path, "w") as handle:
        for problem in problems:
            # Python mode: pydantic's JSON mode would quietly turn NaN into null.
            data = problem.model_dump()
            handle.write(json.dumps(data, ensure_ascii=False, allow_nan=False) + "\n")
            count += 1
    return count
