"""Calibration on live traffic: ``GET /v1/optscale/savings`` (what shadow sampling measured) and
``POST /v1/optscale/tables/reload`` (read ``--tables-dir`` again). Both need a client key like the
other ``/v1/optscale`` endpoints."""

from __future__ import annotations


from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ..errors import error_body
from ..responses import json_safe
from ..savings import savings_report
from ..state import Ctx

__all__ = ["router"]

router = APIRouter()


@router.get("/v1/optscale/savings")
async def savings(request: Request, ctx: Ctx):
    ctx.caller(request)
    rows = savings_report(await ctx.savings.snapshot())
    return json_safe({"object": "optscale.savings", "shadow_share": ctx.config.shadow_share, "data": rows})


@router.post("/v1/optscale/tables/reload")
async def reload_tables(request: Request, ctx: Ctx):
    """200 when every table file was read; 422 (``invalid_table``, naming the first file refused and what is
    wrong) when one was refused: its previous table, if any, stays in use. Both list every file's status."""
    ctx.caller(request)
    if ctx.config.tables_dir is None:
        return JSONResponse(error_body(400, "this server has no tables_dir (start it with --tables-dir)", None,
                                       "no_tables_dir"), 400)
    statuses = await ctx.reload_all_tables()  # with --state: on every replica
    body = {"object": "optscale.tables.reload", "tables": [s.json() for s in statuses]}
    refused = [s for s in statuses if s.status == "refused"]
    if not refused:
        return body
    first = refused[0]
    kept = "; the table read before from it stays in use" if first.kept else ""
    error = error_body(422, f"{len(refused)} stopping table file(s) refused; {first.error}{kept}", first.name,
                       "invalid_table")
    return JSONResponse({**error, **body}, 422)
