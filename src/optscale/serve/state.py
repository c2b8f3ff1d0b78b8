"""What the routes share, injected as a FastAPI dependency: ``ctx: Annotated[AppState, Depends(app_state)]``."""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import Request

from .auth import ClientKeys
from .bodies import BodyReader
from .episodes import Service
from .idempotency import IdempotencyStore
from .replicas import IdempotencyBackend, InProcessIdempotency, SharedState
from .server import Drain
from .settings import ServeConfig

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
    #: ``Idempotency-Key`` answers: this process's ``store``, or Redis shared by the replicas (``--state``)
    idempotency: IdempotencyBackend = field(init=False)
    #: the replicas' shared state (``--state``), connected by the app's lifespan; None without it
    shared: SharedState | None = None

    def __post_init__(self) -> None:
        self.idempotency = InProcessIdempotency(self.store)

    def caller(self, request: Request) -> str:
        """Who is asking (a digest prefix of the client key; empty without keys), or raise a 401."""
        return self.keys.check(request.headers.get("authorization")) or ""


def app_state(request: Request) -> AppState:
    return request.app.state.optscale
