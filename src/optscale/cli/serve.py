"""``optscale serve``: the OpenAI-compatible adaptive-sampling proxy (extra ``serve``).

Thin: builds a :class:`~optscale.serve.ServeConfig` from an optional TOML/YAML/JSON file and
the flags (flags win), then runs the app with uvicorn. :data:`SERVE_FLAGS` translates the
library's names of bad values into these flags.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from ..errors import InputError

_MISSING = [m for m in ("fastapi", "uvicorn", "prometheus_client", "httpx") if importlib.util.find_spec(m) is None]
if _MISSING:  # say so instead of failing on the imports below
    raise InputError(f"the server needs the serve extra ({', '.join(_MISSING)} missing): "
                     "pip install 'optscale[serve]'", "optscale serve")

from ..live.scorers import SCORERS  # noqa: E402 - after the check of the serve extra
from ..policies import POLICIES, parse_settings, settings_help  # noqa: E402
from ..serve.settings import UPSTREAM_KEY_ENV, ServeConfig, build_serve_config  # noqa: E402
from .flags import flags  # noqa: E402

_OWN = ("upstream", "model", "scorer", "policy", "n_max", "host", "port", "api_keys_file", "max_episodes",
        "max_in_flight", "in_flight", "max_deadline_s", "max_total_tokens", "log_format", "tables_dir", "shadow_share",
        "shadow_in_flight", "traffic_dir", "traffic_rotate_mb", "traffic_store_prompts")
_REPLICAS = ("state", "upstream_session_header", "drain_s")  # several replicas behind a load balancer
SERVE_FLAGS: dict[str, str] = {
    **{name: "--" + name.replace("_", "-") for name in _OWN + _REPLICAS},
    "config": "--config",
    "policy_settings": "--set", "policy_settings.": "--set ", "settings": "--set", "settings.": "--set ",
    "scorer_settings": "--scorer-set", "scorer_settings.": "--scorer-set ", "scorer.": "--scorer-set ",
}
"""Library names (settings, config keys) -> the flags of ``optscale serve``."""


def register(app: typer.Typer) -> None:
    """Add ``serve`` to the root app."""
    app.command("serve")(serve)


def _help(name: str, after: str = "") -> str:
    field = ServeConfig.model_fields[name]
    text = (field.description or "")
    text = text[:1].upper() + text[1:] + after + "."
    if not field.is_required() and field.default not in (None, {}, []):
        text += f" [default: {field.default}]"
    return escape(text)


def _opt(name: str, after: str = "", **kwargs) -> typer.models.OptionInfo:
    return typer.Option("--" + name.replace("_", "-"), help=_help(name, after), show_default=False, **kwargs)


_SCORER_HELP = escape("How samples are scored: " + "; ".join(f"{n}: {s.help}" for n, s in SCORERS.items()) + ".")
_SCORER_SET_HELP = escape("Scorer setting key=value, repeatable. " + "; ".join(
    f"{n}: {', '.join(s.settings.model_fields) if s.settings else 'none'}" for n, s in SCORERS.items()) + ".")
_SET_HELP = escape(f"Setting of the default policy, key=value, repeatable. {settings_help()}.")


def serve(
    upstream: Annotated[list[str] | None, _opt("upstream", " (repeat the flag)")] = None,
    model: Annotated[str | None, _opt("model")] = None,
    scorer: Annotated[str | None, typer.Option("--scorer", help=_SCORER_HELP, show_default=False)] = None,
    scorer_set: Annotated[list[str] | None, typer.Option("--scorer-set", help=_SCORER_SET_HELP,
                                                         show_default=False)] = None,
    policy: Annotated[str | None, _opt("policy", ": " + ", ".join(POLICIES))] = None,
    n_max: Annotated[int | None, _opt("n_max")] = None,
    settings: Annotated[list[str] | None, typer.Option("--set", help=_SET_HELP, show_default=False)] = None,
    host: Annotated[str | None, _opt("host")] = None,
    port: Annotated[int | None, _opt("port")] = None,
    api_keys_file: Annotated[Path | None, _opt("api_keys_file")] = None,
    max_episodes: Annotated[int | None, _opt("max_episodes")] = None,
    max_in_flight: Annotated[int | None, _opt("max_in_flight")] = None,
    in_flight: Annotated[int | None, _opt("in_flight")] = None,
    max_deadline_s: Annotated[float | None, _opt("max_deadline_s")] = None,
    max_total_tokens: Annotated[int | None, _opt("max_total_tokens")] = None,
    log_format: Annotated[str | None, _opt("log_format")] = None,
    tables_dir: Annotated[Path | None, _opt("tables_dir", "; SIGHUP or POST /v1/optscale/tables/reload reads it "
                                            "again")] = None,
    shadow_share: Annotated[float | None, _opt("shadow_share")] = None,
    shadow_in_flight: Annotated[int | None, _opt("shadow_in_flight")] = None,
    traffic_dir: Annotated[Path | None, _opt("traffic_dir")] = None,
    traffic_rotate_mb: Annotated[float | None, _opt("traffic_rotate_mb")] = None,
    traffic_store_prompts: Annotated[bool | None, typer.Option(
        "--traffic-store-prompts/--no-traffic-store-prompts", help=_help("traffic_store_prompts"),
        show_default=False)] = None,
    state: Annotated[str | None, _opt("state", ", e.g. redis://127.0.0.1:6379/0 (extra redis)")] = None,
    upstream_session_header: Annotated[str | None, _opt("upstream_session_header")] = None,
    drain_s: Annotated[float | None, _opt("drain_s")] = None,
    config_file: Annotated[Path | None, typer.Option(
        "--config", help=escape("TOML, YAML or JSON file with any setting of docs/serve.md (underscored names); "
                                f"flags override it. The upstream key: api_key there or {UPSTREAM_KEY_ENV}."),
        show_default=False)] = None,
) -> None:
    """Serve an OpenAI-compatible API that samples each request adaptively from an upstream server."""
    with flags(SERVE_FLAGS):
        values = {"upstream": upstream, "model": model, "scorer": scorer, "policy": policy, "n_max": n_max,
                  "host": host, "port": port, "api_keys_file": str(api_keys_file) if api_keys_file else None,
                  "max_episodes": max_episodes, "max_in_flight": max_in_flight, "in_flight": in_flight,
                  "max_deadline_s": max_deadline_s, "max_total_tokens": max_total_tokens, "log_format": log_format,
                  "tables_dir": str(tables_dir) if tables_dir else None, "shadow_share": shadow_share,
                  "shadow_in_flight": shadow_in_flight, "traffic_dir": str(traffic_dir) if traffic_dir else None,
                  "traffic_rotate_mb": traffic_rotate_mb, "traffic_store_prompts": traffic_store_prompts,
                  "policy_settings": parse_settings(settings)}
        values |= {"state": state, "upstream_session_header": upstream_session_header, "drain_s": drain_s}
        try:
            values["scorer_settings"] = parse_settings(scorer_set)
        except InputError as exc:
            raise InputError(exc.detail, "scorer_settings") from None
        config = build_serve_config(flag_values=values, config_file=str(config_file) if config_file else None)
        if config.state is not None:  # a located error now, rather than a server that never becomes ready
            from ..serve.replicas import check_reachable

            check_reachable(config.state)
        from ..serve import create_app

        app = create_app(config)
    _run(app, config)


def _run(app, config: ServeConfig) -> None:
    from ..serve.app import JsonFormatter
    from ..serve.server import run

    access = logging.getLogger("optscale.serve.access")
    if logging.getLogger("optscale").getEffectiveLevel() <= logging.WARNING:  # not with -q
        access.setLevel(logging.INFO)
    if config.log_format == "json":
        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
        access.addHandler(handler)
        access.propagate = False
    run(app, config)
