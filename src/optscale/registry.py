"""Registries of plug-ins (policies, scorers, selection rules, predictor kinds).

One registry per kind is the single list of what exists: the CLI's choices and help,
configuration validation and the docs are all derived from it, so a new plug-in is added
in one place: where it is defined (``@POLICIES.register(...)``), or in another package
through an entry point of the registry's ``group`` (e.g. ``optscale.policies``), loaded on the
first lookup or listing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from importlib import metadata
from typing import Any, Generic, TypeVar

from .errors import InputError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one plug-in kind, in registration order.

    ``first`` names entries that lead every listing, in that order (the others follow in
    registration order). ``group`` is the entry-point group that other packages register into;
    ``check(name, obj)`` validates what an entry point loads and returns the entry (it raises
    ``ValueError`` or ``TypeError`` for an object that is not one).
    """

    def __init__(self, kind: str, *, first: Sequence[str] = (), group: str | None = None,
                 check: Callable[[str, Any], T] | None = None):
        self.kind = kind
        self.group = group
        self._first = tuple(first)
        self._check = check
        self._entries: dict[str, T] = {}
        self._plugins_loaded = group is None

    def add(self, name: str, entry: T) -> T:
        """Register ``entry`` under ``name``; a name holds one entry (registering it again is a no-op)."""
        if name in self._entries and self._entries[name] is not entry:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""
        return lambda entry: self.add(name, entry)

    def _load_plugins(self) -> None:
        """Register the entry points of :attr:`group` (once, on the first lookup or listing).

        A broken entry point (its module fails to import, the object is missing or is not a
        plug-in of this kind, its name is taken) raises :class:`InputError` naming it and its
        distribution; the next lookup tries again."""
        if self._plugins_loaded:
            return
        self._plugins_loaded = True  # an entry point's module may look the registry up while it loads
        try:
            for ep in sorted(metadata.entry_points(group=self.group), key=lambda e: e.name):
                dist = getattr(ep.dist, "name", None)
                where = f"entry point {ep.name} = {ep.value} (group {self.group}"
                where += f", distribution {dist})" if dist else ")"
                try:
                    obj = ep.load()
                    entry = self._check(ep.name, obj) if self._check else obj
                    self.add(ep.name, entry)
                except Exception as exc:  # noqa: BLE001 - any failure of third-party code is named, not a traceback
                    raise InputError(f"cannot load {self.kind} {ep.name!r}: {type(exc).__name__}: {exc}",
                                     where) from exc
        except BaseException:
            self._plugins_loaded = False
            raise

    def _ordered(self) -> dict[str, T]:
        self._load_plugins()
        if not self._first:
            return self._entries
        lead = {n: self._entries[n] for n in self._first if n in self._entries}
        return {**lead, **{n: e for n, e in self._entries.items() if n not in lead}}

    def get(self, name: str, where: str | None = None) -> T:
        """The entry called ``name``; an unknown name raises :class:`InputError` listing the choices."""
        entries = self._ordered()
        try:
            return entries[name]
        except (KeyError, TypeError):
            raise InputError(f"unknown {self.kind} {name!r}; choose from {', '.join(entries)}",
                             where or self.kind) from None

    def names(self) -> list[str]:
        return list(self._ordered())

    def items(self) -> list[tuple[str, T]]:
        return list(self._ordered().items())

    def __contains__(self, name: object) -> bool:
        try:
            return name in self._ordered()
        except TypeError:  # an unhashable name is simply not registered
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._ordered())
