"""``/v1/models`` and ``/v1/optscale/policies``: what a client may ask for."""

from __future__ import annotations


from fastapi import APIRouter, Request

from ...policies import POLICIES, policy_settings_schema
from ..options import OPTION_KEYS, REQUEST_OPTIONS_SCHEMA, SERVER_ONLY
from ..state import Ctx

__all__ = ["router"]

router = APIRouter()


@router.get("/v1/models")
async def models(request: Request, ctx: Ctx):
    ctx.caller(request)
    config = ctx.config
    served = await ctx.service.upstream_models()
    upstream = [m for m in served or [config.model] if m != config.model]
    aliases = [f"{config.model}+{name}" for name in POLICIES.names()]
    return {"object": "list", "data": [{"id": i, "object": "model", "created": 0, "owned_by": "optscale"}
                                       for i in [config.model, *upstream, *aliases]]}


@router.get("/v1/optscale/policies")
async def policies(request: Request, ctx: Ctx):
    ctx.caller(request)
    config = ctx.config
    data = []
    tables = ctx.tables.names()
    for name in POLICIES.names():
        schema = policy_settings_schema(name)
        for key in SERVER_ONLY:
            if key == "table" and config.tables_dir is not None and key in schema["properties"]:
                schema["properties"][key] = {"type": "string", "enum": tables, "description": (
                    "a stopping table of this server, by file name (one of `tables`)")}
            else:
                schema["properties"].pop(key, None)
        schema["properties"] = {**REQUEST_OPTIONS_SCHEMA, **schema["properties"]}
        if "required" in schema:
            schema["required"] = [k for k in schema["required"] if k in schema["properties"]]
        data.append({"id": name, "description": schema["description"], "settings_schema": schema})
    return {"object": "list", "data": data, "default": {"policy": config.policy, "n_max": config.n_max},
            "request_options": list(OPTION_KEYS), "tables": tables}
