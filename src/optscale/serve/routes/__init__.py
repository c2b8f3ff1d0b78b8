"""The app's endpoints, one module per concern; each takes the shared parts as a dependency (:mod:`..state`)."""

from __future__ import annotations

from . import admin, calibration, generate, info, plan

ROUTERS = (generate.router, info.router, plan.router, admin.router, calibration.router)

__all__ = ["ROUTERS"]
