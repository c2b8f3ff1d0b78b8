"""The stopping tables of ``--tables-dir``, read into memory at start and again on a reload.

A request names a table by file name (:func:`~.options.table_file` checks the name); it gets
the table this set holds, never a file read at request time. :meth:`TableSet.reload`
(``POST /v1/optscale/tables/reload``, SIGHUP) reads the directory again: a table whose file
changed is replaced, a new file is added, a removed file is dropped, and a file that cannot be
read or is not a valid table is refused with a located error while the table read before from
it (if any) stays. Episodes under way keep the table their policy holds (a reference), so a
reload never changes an episode in the middle.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError, OptscaleError
from ..policies.learned import StoppingTable
from .options import table_names

__all__ = ["LoadedTable", "TableSet", "TableStatus"]

log = logging.getLogger("optscale.serve")


@dataclass(frozen=True)
class LoadedTable:
    """A table as read: its file name, the bytes' sha256 and the validated table."""

    name: str
    sha256: str
    table: StoppingTable


@dataclass(frozen=True)
class TableStatus:
    """What a reload did with one file: ``loaded`` (new or changed), ``unchanged``, ``removed``, or ``refused``
    (``error`` says where and what; ``kept`` whether the table read before from the file stays in use)."""

    name: str
    status: str
    sha256: str | None = None
    error: str | None = None
    kept: bool = False

    def json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "status": self.status, "sha256": self.sha256}
        if self.status == "refused":
            out.update(error=self.error, kept_previous=self.kept)
        return out


class TableSet:
    """The tables of one directory (empty without one)."""

    def __init__(self, directory: str | None):
        self.directory = directory
        self._tables: dict[str, LoadedTable] = {}
        self._errors: dict[str, str] = {}  # files refused at the last read, with why
        # every table read and still held (by this set or by a policy, e.g. of an episode under way)
        self._read: weakref.WeakKeyDictionary[StoppingTable, LoadedTable] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        return sorted(self._tables)

    def get(self, name: str) -> LoadedTable | None:
        return self._tables.get(name)

    def identify(self, table: StoppingTable) -> LoadedTable | None:
        """The file a table was read from, and its sha256 then (also after a reload replaced it), if this set
        read it."""
        return self._read.get(table)

    def error(self, name: str) -> str | None:
        """Why the file ``name`` was refused at the last read (None when it was not)."""
        return self._errors.get(name)

    def reload(self) -> list[TableStatus]:
        """Read the directory again (see the module); one status per file, sorted by name."""
        if self.directory is None:
            return []
        with self._lock:
            root = Path(self.directory).resolve()
            found = table_names(self.directory)
            tables: dict[str, LoadedTable] = {}
            errors: dict[str, str] = {}
            report = []
            for name in found:
                old = self._tables.get(name)
                try:
                    raw = (root / name).read_bytes()
                    digest = hashlib.sha256(raw).hexdigest()
                    if old is not None and old.sha256 == digest:
                        tables[name] = old
                        report.append(TableStatus(name, "unchanged", digest))
                        continue
                    table = _parse(raw, root / name, name)
                except (OSError, InputError) as exc:
                    error = str(exc) if isinstance(exc, InputError) else f"{name}: {exc.strerror or exc}"
                    errors[name] = error
                    if old is not None:
                        tables[name] = old
                    report.append(TableStatus(name, "refused", old.sha256 if old else None, error, old is not None))
                    log.error("stopping table %s refused: %s%s", name, error,
                              "; the table read before stays in use" if old is not None else "")
                    continue
                tables[name] = self._read[table] = LoadedTable(name, digest, table)
                report.append(TableStatus(name, "loaded", digest))
            for name in sorted(set(self._tables) - set(found)):
                report.append(TableStatus(name, "removed", self._tables[name].sha256))
            self._tables, self._errors = tables, errors
        return sorted(report, key=lambda s: s.name)


def _parse(raw: bytes, path: Path, name: str) -> StoppingTable:
    """The validated table of a file's bytes; errors name the file (by name, not the server's path) and the field."""
    try:
        data = json.loads(raw)
    except ValueError as exc:
        line = getattr(exc, "lineno", None)
        raise InputError(f"not valid JSON ({getattr(exc, 'msg', exc)})", f"{name}:{line}" if line else name) from None
    try:
        return StoppingTable.from_json(data, str(path))
    except InputError as exc:
        raise InputError(exc.detail, (exc.where or "").replace(str(path), name) or name) from None
    except (OptscaleError, TypeError, ValueError, KeyError) as exc:
        raise InputError(f"not a valid stopping table ({exc})", name) from None
