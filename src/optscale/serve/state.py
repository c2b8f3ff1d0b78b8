"""What the routes share, injected as a FastAPI dependency: ``ctx: Annotated[AppState, Depends(app_state)]``.

Hooks meant to be called from outside a request too (a signal, a broadcast from another
replica): :meth:`AppState.reload_tables` (:meth:`AppState.reload_all_tables` on every replica,
:meth:`AppState.on_reload` for a broadcast); the savings counts are :attr:`AppState.savings`
(any :class:`~.savings.SavingsBackend`; summed over replicas with ``--state``).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from .auth import ClientKeys
from .bodies import BodyReader
from .episodes import Service
from .idempotency import IdempotencyStore
from .replicas import IdempotencyBackend, InProcessIdempotency, SharedState, StateUnavailable
from .savings import SavingsBackend
from .server import Drain, reload_summary
from .settings import ServeConfig
from .shadow import ShadowRunner
from .tables import TableSet, TableStatus

__all__ = ["AppState", "app_state"]

log = logging.getLogger("optscale.serve")


@dataclass
class AppState:
    """One app's shared parts (``app.state.optscale``)."""

    config: ServeConfig
    service: Service
    store: IdempotencyStore
    bodies: BodyReader
    keys: ClientKeys
    drain: Drain
    tables: TableSet
    savings: SavingsBackend
    shadow: ShadowRunner

    #: ``Idempotency-Key`` answers: this process's ``store``, or Redis shared by the replicas (``--state``)
    idempotency: IdempotencyBackend = field(init=False)
    #: the replicas' shared state (``--state``), connected by the app's lifespan; None without it
    shared: SharedState | None = None

    def __post_init__(self) -> None:
        self.idempotency = InProcessIdempotency(self.store)

    def reload_tables(self) -> list[TableStatus]:
        """Read ``tables_dir`` again (blocking file reads: call it in a worker thread from the event loop).

        New requests get the tables read now; episodes under way keep theirs; a file refused keeps
        the table read from it before. One status per file (see :class:`~.tables.TableStatus`).
        """
        return self.tables.reload()

    async def reload_all_tables(self) -> list[TableStatus]:
        """:meth:`reload_tables` here and, with ``--state``, on every replica (a broadcast); this one's statuses.

        If Redis cannot be reached the others reload once it is back (their listeners resubscribe then).
        """
        statuses = await asyncio.to_thread(self.reload_tables)
        if self.shared is not None:
            try:
                await self.shared.publish_reload("tables")
            except StateUnavailable:
                log.warning("the table reload reached this replica only for now (Redis unavailable)")
        return statuses

    async def on_reload(self, data: str, origin: str) -> None:
        """A reload broadcast by a replica (``origin``; empty after a Redis outage, when broadcasts were lost)."""
        if self.shared is not None and origin == self.shared.replica:
            return  # this replica's own, done already
        statuses = await asyncio.to_thread(self.reload_tables)
        log.warning("stopping tables reloaded (%s): %s", f"broadcast by replica {origin}" if origin else
                    "after a Redis outage", reload_summary(statuses))

    def caller(self, request: Request) -> str:
        """Who is asking (a digest prefix of the client key; empty without keys), or raise a 401."""
        return self.keys.check(request.headers.get("authorization")) or ""


def app_state(request: Request) -> AppState:
    return request.app.state.optscale


#: A route's parameter that receives the app's shared state (``ctx: Ctx``).
Ctx = Annotated[AppState, Depends(app_state)]
