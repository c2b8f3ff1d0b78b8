"""All file I/O of the library in one place: located reading, atomic writing.

Reading: JSON Lines (and whole JSON or text files) with errors that name ``file:line``,
UTF-8 with an optional byte-order mark, transparent ``.gz``, bounded line length, and no
traceback for unreadable paths (``/proc/self/mem``, a folder, a missing file).

Writing: every file goes through a temporary file in the same folder that is fsynced,
renamed over the target and followed by an fsync of the folder, so a crash or a full disk
never leaves half a file behind; :func:`staged_dir` writes a whole set of files (a report)
first and moves them into place only once every one of them was written. An output folder
keeps a list of the files optscale wrote there (:data:`MANIFEST`), and no other file in it
is ever replaced (:func:`claim_outputs`).
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import json
import os
import shutil
import stat
import tempfile
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from .errors import InputError

__all__ = [
    "MANIFEST", "MAX_LINE_BYTES", "StrPath", "atomic_open", "check_out_file", "claim_outputs", "ensure_out_dir",
    "iter_objects", "numbered_lines", "read_json", "read_text", "same_file", "staged_dir", "write_bytes", "write_json",
    "write_jsonl", "write_text",
]

StrPath = str | os.PathLike[str]

#: Longest accepted line of a JSON Lines file (a pool line holds every response of a problem).
MAX_LINE_BYTES = 256 * 1024 * 1024

#: What a damaged file raises while it is read: a corrupt gzip stream raises zlib.error, not OSError.
_READ_ERRORS = (OSError, EOFError, zlib.error)


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
        if not p.is_file():  # a folder, a device, a FIFO; stat's own errors are told apart below
            os.stat(p)
            raise InputError("not a regular file", name)
        raw = open(p, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise InputError("file not found", name) from None
        if exc.errno == errno.ELOOP:
            raise InputError("cannot read: a symbolic link loop", name) from None
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
            except _READ_ERRORS as exc:
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


def iter_objects(path: StrPath, require: tuple[str, ...] = (),
                 expected: str = "a JSON object") -> Iterator[tuple[str, dict]]:
    """``(where, object)`` for each non-blank line, ``where`` being ``path:line``.

    Malformed JSON, a line that is not an object (the message says what was ``expected``), or
    one missing a ``require``\\ d key raises :class:`InputError` naming the line.
    """
    name = _name(path)
    for lineno, line in numbered_lines(path):
        if not line.strip():
            continue
        where = f"{name}:{lineno}"
        row = parse_json(line, where)
        if not isinstance(row, dict):
            raise InputError(f"expected {expected}, got {type(row).__name__}", where)
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
        except _READ_ERRORS as exc:
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

    A symbolic link is followed, as the shell's ``>`` does: the file it names is replaced and
    the link kept. An existing target that is not a regular file (``/dev/null``, a FIFO, a
    terminal) is written into directly, without the temporary file: renaming over it would
    swap the device for a regular file (as root, destroying ``/dev/full``), and ``-o /dev/null``
    is a Unix idiom. Such a write is not atomic, and its errors (``/dev/full``) name ``path``.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    name = _name(path)
    _check_file_name(Path(path), name, name)
    text = {"encoding": "utf-8", "newline": "\n"} if mode == "w" else {}
    if _special(path):  # opened by its own name: the kernel follows /dev/stdout to a pipe, realpath cannot
        try:
            with open(path, mode, **text) as handle:
                yield handle
        except OSError as exc:
            raise _cannot("write", exc, name) from exc
        return
    target = Path(os.path.realpath(path))
    temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        handle = open(temporary, "x" if mode == "w" else "xb", **text)  # noqa: SIM115 - closed below
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


def _special(path: StrPath) -> bool:
    """Whether ``path`` exists and is neither a regular file nor a folder (a device, a FIFO, a socket)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False  # not there yet; any other reason is told when it is opened
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


def _check_file_name(target: Path, name: str, where: str) -> None:
    """A file path must end in a name (``.``, ``/`` and ``""`` do not) and not be a folder."""
    if not target.name or target.name == ".." or target.is_dir():
        shown = "" if where == name else f"{name or repr(name)} "
        raise InputError(f"{shown}is a folder, not a file name", where)


def check_out_file(path: StrPath, where: str | None = None, inputs: Iterable[StrPath] = ()) -> Path:
    """Fail before any work when the output file ``path`` cannot be written: no file name, a folder,
    an unwritable folder, or one of ``inputs`` (the command's input files and its other outputs,
    compared through links and ``..``).

    Errors name ``where`` (default: the path).
    """
    target = Path(path)
    where = where or _name(path)
    _check_file_name(target, _name(path), where)
    for other in inputs:
        if other is not None and _same_place(path, other):
            raise InputError(f"names the same file as {_name(other)!r}; write to another file", where)
    if not _special(target):  # a device or pipe is written into (atomic_open): its folder (/dev) need not be writable
        ensure_out_dir(target.parent, where)
    return target


def _same_place(a: StrPath, b: StrPath) -> bool:
    """The same existing file, or the same path once resolved (for files not written yet)."""
    return same_file(a, b) or Path(a).resolve() == Path(b).resolve()


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

    An empty path, an existing file in its place, a read-only or virtual file system (``/proc``) raises
    :class:`InputError` naming ``where`` (default: the path) instead of failing after an
    hour of computation.
    """
    out = Path(path)
    where = where or _name(path)
    if not _name(path):  # Path("") is the current folder: an empty --out is a mistake, not "here"
        raise InputError("an empty path; name a folder", where)
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


#: The hidden file of an output folder that lists (a JSON array) the files optscale wrote there.
MANIFEST = ".optscale-written"


def claim_outputs(out: StrPath, names: Iterable[str], where: str | None = None, replace: bool = False) -> None:
    """Let optscale (re)write the files ``names`` (relative paths) in the folder ``out``, or refuse all.

    An output folder can hold the user's own files, even the command's input (``--out`` the
    folder of the pool): a file there is replaced only when :data:`MANIFEST` lists it, i.e. an
    earlier optscale command wrote it, so rerunning a command into its folder keeps working.
    Any other existing file raises :class:`InputError` naming ``where`` (default: ``out``)
    before anything is written; otherwise ``names`` are added to the list (atomically)
    before the caller writes them, so a crash midway still leaves them claimed. ``replace``
    adopts existing files instead (the user said so: ``--force``; or the folder is optscale's own).
    """
    folder = Path(out)
    where = where or _name(out)
    listed = folder / MANIFEST
    written = read_json(listed) if os.path.lexists(listed) else []
    if not isinstance(written, list) or not all(isinstance(n, str) for n in written):
        raise InputError("not a list of file names; remove it (optscale's record of what it wrote)", str(listed))
    new = set(names) - set(written)
    for name in sorted(new):
        if not replace and os.path.lexists(folder / name):
            older = "" if written else f" (folders written before optscale kept {MANIFEST} have no such record)"
            raise InputError(f"{folder / name} exists and was not written by optscale{older}; remove it or choose "
                             "another folder", where)
    if new:
        write_json(listed, sorted(set(written) | new), indent=None)


#: Staging folders of :func:`staged_dir`; the writer's process id follows the prefix.
_STAGING = ".staging-"
#: A staging folder whose writer cannot be identified counts as abandoned after this long.
_STALE_S = 24 * 3600


def _abandoned(folder: Path) -> bool:
    """Whether a staging folder was left by a writer that no longer runs (killed mid-report)."""
    pid = folder.name[len(_STAGING):].partition("-")[0]
    if pid.isdigit() and int(pid) != os.getpid():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except OSError:
            return False  # alive, owned by another user
        return False
    try:
        return not pid.isdigit() and time.time() - folder.stat().st_mtime > _STALE_S
    except OSError:
        return False


@contextlib.contextmanager
def staged_dir(out: StrPath, where: str | None = None, replace: bool = False) -> Iterator[Path]:
    """Write a set of files into a hidden staging folder inside ``out``; move them in once all are written.

    The staging folder lives inside ``out`` so that every move is a rename on one file system.
    On success each staged file is renamed into ``out`` (replacing its older version); a
    reader sees every file either whole-old or whole-new, and only a crash during that short
    loop of renames can leave a mix of the two sets. On any failure while writing, the staging
    folder is removed and ``out`` keeps exactly what it had; so it does when one of the
    files would replace a file that optscale did not write (:func:`claim_outputs`), unless
    ``replace``. Staging
    folders abandoned by an earlier run that was killed are removed on entry.
    """
    target = ensure_out_dir(out, where)
    for old in target.glob(_STAGING + "*"):
        if old.is_dir() and _abandoned(old):
            shutil.rmtree(old, ignore_errors=True)
    try:
        staging = Path(tempfile.mkdtemp(dir=target, prefix=f"{_STAGING}{os.getpid()}-"))
    except OSError as exc:
        raise _cannot("write", exc, where or _name(out)) from None
    try:
        yield staging
        staged = [item.relative_to(staging) for item in sorted(staging.rglob("*")) if item.is_file()]
        claim_outputs(target, [name.as_posix() for name in staged], where, replace)
        for name in staged:
            dest = target / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / name, dest)
        _fsync_dir(target)
    except OSError as exc:
        raise _cannot("write", exc, where or _name(out)) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
