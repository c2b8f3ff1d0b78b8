"""User-facing errors.

Every problem caused by input (a file, a field, a flag) raises :class:`InputError`
with the place it came from, so the CLI can print one clear line instead of a traceback.
"""

from __future__ import annotations


class OptscaleError(Exception):
    """Base class of errors that the CLI reports without a traceback."""


class InputError(OptscaleError, ValueError):
    """Bad input, with the place it came from (``file:line field``, a flag, an argument)."""

    def __init__(self, message: str, where: str | None = None):
        self.where = where
        self.detail = message
        super().__init__(f"{where}: {message}" if where else message)
