"""What the routes share, injected as a FastAPI dependency: ``ctx: Annotated[AppState, Depends(app_state)]``."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from .auth import ClientKeys
from .bodies import BodyReader
from .episodes import Service
from .idempotency import IdempotencyStore
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

    def caller(self, request: Request) -> str:
        """Who is asking (a digest prefix of the client key; empty without keys), or raise a 401."""
        return self.keys.check(request.headers.get("authorization")) or ""


def app_state(request: Request) -> AppState:
    return request.app.state.optscale
