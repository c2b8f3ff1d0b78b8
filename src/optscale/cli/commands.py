"""The list of CLI command modules; each exposes ``register(app)``."""

from __future__ import annotations

from . import live, offline, pools, simulate
from . import predictor

MODULES: list = [offline, pools, live, simulate, predictor]
