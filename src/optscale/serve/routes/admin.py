"""Operations: ``/health`` (the process answers), ``/ready`` (the upstream and scorer work, and the server is not
shutting down), ``/metrics``."""

from __future__ import annotations


from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from ..errors import error_body
from ..metrics import CONTENT_TYPE_LATEST
from ..server import shutting_down
from ..state import Ctx

__all__ = ["router"]

router = APIRouter()


@router.get("/health")
async def health():
    return {"status": "ok"}


@router.get("/ready")
async def ready(ctx: Ctx):
    if ctx.drain.draining:
        err = shutting_down(ctx.config.retry_after_s)
        return JSONResponse(err.body(), err.status, headers=err.headers)
    if ctx.shared is not None and not await ctx.shared.ping():
        return JSONResponse(error_body(503, "not ready: the replicas' shared state (Redis) is unavailable", None,
                                       "not_ready"), 503, headers={"Retry-After": str(ctx.config.retry_after_s)})
    if not await ctx.service.refresh():
        return JSONResponse(error_body(503, f"not ready: {ctx.service.ready_error}", None, "not_ready"), 503,
                            headers={"Retry-After": str(ctx.config.retry_after_s)})
    return {"status": "ready"}


@router.get("/metrics")
async def metrics(ctx: Ctx):
    return Response(ctx.service.metrics.render(), media_type=CONTENT_TYPE_LATEST)
