"""User-facing errors, named in the library's own terms.

Every problem caused by input raises :class:`InputError` with the place it came from:
``file:line field NAME`` for data, or the *library's* name of the argument or setting
(``n_max``, ``settings.alpha``, ``scorer.base_url``) for values passed in code. A
notebook user sees the names they passed; the CLI translates those names to its flags in
one table per command (:meth:`InputError.renamed`), so renaming a flag touches one file.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["OptscaleError", "InputError"]


class OptscaleError(Exception):
    """Base class of errors that the CLI reports without a traceback."""


class InputError(OptscaleError, ValueError):
    """Bad input, with the place it came from (``file:line field``, an argument or setting name)."""

    #: Longest message kept whole: a value echoed from a hostile file must not make a megabyte error.
    MAX_DETAIL = 2000

    def __init__(self, message: str, where: str | None = None):
        if len(message) > self.MAX_DETAIL:
            message = f"{message[:self.MAX_DETAIL]}... ({len(message):,} characters in all)"
        self.where = where
        self.detail = message
        super().__init__(f"{where}: {message}" if where else message)

    def renamed(self, names: Mapping[str, str]) -> "InputError":
        """The same error with its place translated by ``names``.

        A key matches the whole place (``"n_max" -> "--n-max"``) or, when it ends with ``.``,
        its start (``"settings." -> "--set "`` turns ``settings.alpha`` into ``--set alpha``).
        Places that match nothing (file positions) are kept.
        """
        where = self.where
        if where is None:
            return self
        if where in names:
            new = names[where]
        else:
            new = next((names[k] + where[len(k):] for k in sorted(names, key=len, reverse=True)
                        if k.endswith(".") and where.startswith(k)), where)
        if new == where:
            return self
        return _rebuilt(type(self), new, self.detail)

    def __reduce__(self):
        # pickled whole (a parallel worker's error reaches the parent with its place, for the CLI to rename)
        return _rebuilt, (type(self), self.where, self.detail)


def _rebuilt(cls: type, where: str | None, detail: str) -> InputError:
    """An error of class ``cls`` at ``where`` with ``detail``, already bounded: not cut again."""
    err = cls.__new__(cls)
    err.where, err.detail = where, detail
    Exception.__init__(err, f"{where}: {detail}" if where else detail)
    return err
