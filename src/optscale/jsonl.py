"""Reading JSON Lines with errors that name ``file:line``: one place for every reader."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

from .errors import InputError

__all__ = ["numbered_lines", "iter_objects"]


def numbered_lines(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """Numbered lines, decoded one at a time so a bad byte is reported on its own line."""
    name = os.fspath(path)
    try:
        handle = open(path, "rb")
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror or exc}", where=name) from None
    with handle:
        for lineno, raw in enumerate(handle, 1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError:
                raise InputError("not UTF-8 text", where=f"{name}:{lineno}") from None
            yield lineno, line


def iter_objects(path: str | os.PathLike, require: tuple[str, ...] = ()) -> Iterator[tuple[str, dict]]:
    """``(where, object)`` for each non-blank line, ``where`` being ``path:line``.

    Malformed JSON, a line that is not an object, or one missing a ``require``d key raises
    :class:`InputError` naming the line.
    """
    if not Path(path).is_file():
        raise InputError("file not found", os.fspath(path))
    for lineno, line in numbered_lines(path):
        if not line.strip():
            continue
        where = f"{os.fspath(path)}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"malformed JSON: {exc.msg} (column {exc.colno})", where) from None
        if not isinstance(row, dict):
            raise InputError(f"expected a JSON object, got {type(row).__name__}", where)
        missing = [k for k in require if k not in row]
        if missing:
            raise InputError(f"missing field {missing[0]!r}", where)
        yield where, row
