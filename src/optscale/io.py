"""All file I/O of the library in one place: located reading, atomic writing.

Reading: JSON Lines (and whole JSON or text files) with errors that name ``file:line``,
UTF-8 with an optional byte-order mark, transparent ``.gz``, bounded line length, and no
traceback for unreadable paths (``/proc/self/mem``, a folder, a missing file).

Writing: every file goes through a temporary file in the same folder that is fsynced,
renamed over the target and followed by an fsync of the folder, so a crash or a full disk
never leaves half a file behind; :func:`staged_dir` does the same for a whole set of files
(a report), which appears all at once or not at all.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from .errors import InputError

__all__ = [
    "MAX_LINE_BYTES", "StrPath", "atomic_open", "ensure_out_dir", "iter_objects", "numbered_lines", "read_json",
    "read_text", "same_file", "staged_dir", "write_bytes", "write_json", "write_jsonl", "write_text",
]

StrPath = str | os.PathLike[str]

#: Longest accepted line of a JSON Lines file (a pool line holds every response of a problem).
MAX_LINE_BYTES = 256 * 1024 * 1024


def _name(path: StrPath) -> str:
    return os.fspath(path)


def _cannot(action: str, exc: OSError, where: str) -> InputError:
    return InputError(f"cannot {action}: {exc.strerror or exc}", where)


@contextlib.contextmanager
def _open_binary(path: StrPath) -> Iterator[IO[bytes]]:
    """A binary reader of a regular file, decompressing ``.gz``; errors name the path."""
    name = _name(path)
    p = Path(path)
    try:
        if not p.exists():
            raise InputError("file not found", name)
        if not p.is_file():
            raise InputError("not a regular file", name)
        raw = open(p, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise _cannot("read", exc, name) from None
    try:
        if p.suffix == ".gz":
            with gzip.GzipFile(fileobj=raw) as handle:
                yield handle
        else:
            yield raw
    finally:
        raw.close()


def numbered_lines(path: StrPath, max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of a UTF-8 text file (``.gz`` transparently), one line at a time.

    A bad byte, an over-long line, a corrupt gzip stream or a read error raises
    :class:`InputError` naming ``path:line``.
    """
    name = _name(path)
    lineno = 0
    with _open_binary(path) as handle:
        while True:
            lineno += 1
            try:
                raw = handle.readline(max_line_bytes + 1)
            except (OSError, EOFError, gzip.BadGzipFile) as exc:
                raise InputError(f"cannot read: {getattr(exc, 'strerror', None) or exc}", f"{name}:{lineno}") from None
            if not raw:
                return
            if len(raw) > max_line_bytes:
                raise InputError(f"line longer than {max_line_bytes} bytes", f"{name}:{lineno}")
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError:
                raise InputError("not UTF-8 text", f"{name}:{lineno}") from None
            yield lineno, line


def parse_json(text: str, where: str) -> Any:
    """``json.loads`` whose every failure (syntax, 5000-digit numbers, deep nesting) names ``where``."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"malformed JSON: {exc.msg} (column {exc.colno})", where) from None
    except (ValueError, RecursionError) as exc:
        raise InputError(f"malformed JSON: {exc}", where) from None


def iter_objects(path: StrPath, require: tuple[str, ...] = ()) -> Iterator[tuple[str, dict]]:
    """``(where, object)`` for each non-blank line, ``where`` being ``path:line``.

    Malformed JSON, a line that is not an object, or one missing a ``require``\\ d key raises
    :class:`InputError` naming the line.
    """
    name = _name(path)
    for lineno, line in numbered_lines(path):
        if not line.strip():
            continue
        where = f"{name}:{lineno}"
        row = parse_json(line, where)
        if not isinstance(row, dict):
            raise InputError(f"expected a JSON object, got {type(row).__name__}", where)
        missing = [k for k in require if k not in row]
        if missing:
            raise InputError(f"missing field {missing[0]!r}", where)
        yield where, row


def read_text(path: StrPath, max_bytes: int = MAX_LINE_BYTES) -> str:
    """A whole UTF-8 text file (``.gz`` transparently), at most ``max_bytes``."""
    name = _name(path)
    with _open_binary(path) as handle:
        try:
            data = handle.read(max_bytes + 1)
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            raise InputError(f"cannot read: {getattr(exc, 'strerror', None) or exc}", name) from None
    if len(data) > max_bytes:
        raise InputError(f"larger than {max_bytes} bytes", name)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputError("not UTF-8 text", f"{name}:{line}") from None


def read_json(path: StrPath) -> Any:
    """A whole JSON file, errors naming the file."""
    return parse_json(read_text(path), _name(path))


# -- writing -------------------------------------------------------------------------------------


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable; silently skipped where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: StrPath, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file beside ``path`` that replaces it only when the block succeeds.

    The data is fsynced before the rename and the folder after it; on any failure the
    temporary file is removed and an existing ``path`` is left untouched. An existing file's
    permissions are kept. ``OSError`` becomes :class:`InputError` naming ``path``.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    target = Path(path)
    name = _name(path)
    temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        handle = open(temporary, "x" if mode == "w" else "xb",  # noqa: SIM115 - closed below
                      **({"encoding": "utf-8", "newline": "\n"} if mode == "w" else {}))
    except OSError as exc:
        raise _cannot("write", exc, name) from None
    try:
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        if target.exists():
            shutil.copymode(target, temporary)
        os.replace(temporary, target)
    except BaseException as exc:
        temporary.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _cannot("write", exc, name) from exc
        raise
    _fsync_dir(target.parent)


def write_bytes(path: StrPath, data: bytes) -> Path:
    """Write ``data`` atomically (see :func:`atomic_open`)."""
    with atomic_open(path, "wb") as handle:
        handle.write(data)
    return Path(path)


def write_text(path: StrPath, text: str) -> Path:
    """Write UTF-8 ``text`` atomically (see :func:`atomic_open`)."""
    with atomic_open(path, "w") as handle:
        handle.write(text)
    return Path(path)


def write_json(path: StrPath, value: Any, indent: int | None = 2, **dumps: Any) -> Path:
    """Write one JSON document atomically; NaN and Infinity are refused, as JSON forbids them."""
    dumps.setdefault("ensure_ascii", False)
    return write_text(path, json.dumps(value, indent=indent, allow_nan=False, **dumps) + "\n")


def write_jsonl(path: StrPath, rows: Iterable[Any], default: Callable[[Any], Any] | None = None) -> int:
    """Write ``rows`` as JSON Lines atomically and return how many; NaN and Infinity are refused."""
    count = 0
    with atomic_open(path, "w") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False, allow_nan=False, default=default) + "\n")
            count += 1
    return count


def same_file(a: StrPath, b: StrPath) -> bool:
    """Whether two paths name the same existing file (links and ``..`` included)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def ensure_out_dir(path: StrPath, where: str | None = None) -> Path:
    """Create the output folder ``path`` (if needed) and prove it writable, before any work.

    An existing file in its place, a read-only or virtual file system (``/proc``) raises
    :class:`InputError` naming ``where`` (default: the path) instead of failing after an
    hour of computation.
    """
    out = Path(path)
    where = where or _name(path)
    if out.exists() and not out.is_dir():
        raise InputError(f"{_name(path)} exists and is not a folder", where)
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".optscale-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise InputError(f"cannot write to {_name(path)}: {exc.strerror or exc}", where) from None
    return out


@contextlib.contextmanager
def staged_dir(out: StrPath, where: str | None = None) -> Iterator[Path]:
    """Write a set of files into a hidden staging folder beside ``out``; publish them together.

    On success every staged file is renamed into ``out`` (replacing older versions); on any
    failure the staging folder is removed and ``out`` keeps exactly what it had.
    """
    target = ensure_out_dir(out, where)
    try:
        staging = Path(tempfile.mkdtemp(dir=target, prefix=".staging-"))
    except OSError as exc:
        raise _cannot("write", exc, where or _name(out)) from None
    try:
        yield staging
        for item in sorted(staging.rglob("*")):
            if item.is_file():
                dest = target / item.relative_to(staging)
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(item, dest)
        _fsync_dir(target)
    except OSError as exc:
        raise _cannot("write", exc, where or _name(out)) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
