"""What the routes share, injected as a FastAPI dependency: ``ctx: Annotated[AppState, Depends(app_state)]``.

Hooks meant to be called from outside a request too (a signal, a broadcast from another
replica): :meth:`AppState.reload_tables`; the savings counts are :attr:`AppState.savings`
(any :class:`~.savings.SavingsBackend`).
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from .auth import ClientKeys
from .bodies import BodyReader
from .episodes import Service
from .idempotency import IdempotencyStore
from .savings import SavingsBackend
from .server import Drain
from .settings import ServeConfig
from .shadow import ShadowRunner
from .tables import TableSet, TableStatus

__all__ = ["AppState", "app_state"]


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

    def reload_tables(self) -> list[TableStatus]:
        """Read ``tables_dir`` again (blocking file reads: call it in a worker thread from the event loop).

        New requests get the tables read now; episodes under way keep theirs; a file refused keeps
        the table read from it before. One status per file (see :class:`~.tables.TableStatus`).
        """
        return self.tables.reload()

    def caller(self, request: Request) -> str:
        """Who is asking (a digest prefix of the client key; empty without keys), or raise a 401."""
        return self.keys.check(request.headers.get("authorization")) or ""


def app_state(request: Request) -> AppState:
    return request.app.state.optscale
