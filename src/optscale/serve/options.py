"""Where each request's policy, settings and own limits come from, resolved and validated.

The policy and its settings come, in this precedence, from the headers ``X-OptScale-Policy`` /
``X-OptScale-Settings`` (a JSON object), the body's ``optscale`` object (what
``extra_body={"optscale": {...}}`` sends), a model alias ``MODEL+POLICY``, and the server's
defaults; :func:`resolve_options` merges them key by key and reports a bad value at the place
it came from (``optscale.alpha``, ``X-OptScale-Settings.alpha``, ``model``). A request may name
a stopping table of the server's ``tables_dir`` (a file name, never a path).
"""

from __future__ import annotations

import collections
import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError

from ..compose import build_policy
from ..errors import InputError
from ..policies import POLICIES, PolicyBase, policy_settings_schema
from .errors import ApiError
from .settings import ServeConfig

__all__ = ["Options", "resolve_options", "located", "table_names", "table_file", "loaded_table", "OPTION_KEYS",
           "HEADER_POLICY", "HEADER_SETTINGS", "SERVER_ONLY", "REQUEST_OPTIONS_SCHEMA"]

HEADER_POLICY = "X-OptScale-Policy"
HEADER_SETTINGS = "X-OptScale-Settings"
#: Keys of the ``optscale`` object that are the request's own, not the policy's settings.
OPTION_KEYS = ("policy", "n_max", "deadline_s", "max_total_tokens", "return_samples")
#: Policy settings a request may not set: they name files on the server (set them with ``--set``).
#: ``table`` is the exception where the server has a ``tables_dir``: a request names a file in it.
SERVER_ONLY = ("priors", "table")
MAX_HEADER_CHARS = 8192
TABLE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MAX_TABLES_LISTED = 1000


def _usable_table(root: Path, name: str) -> tuple[Path, os.stat_result] | None:
    """The file of the table ``name`` and its stat, when a request may use it: a ``.json`` file right in
    ``root`` (a link is followed only when it stays there), else None."""
    if not TABLE_NAME.match(name) or not name.endswith(".json"):
        return None
    path = (root / name).resolve()
    try:
        st = path.stat()
    except OSError:
        return None
    return (path, st) if path.parent == root and stat.S_ISREG(st.st_mode) else None


def table_names(tables_dir: str) -> list[str]:
    """The stopping tables a request may name (exactly those :func:`table_file` serves; sorted, bounded)."""
    root = Path(tables_dir).resolve()
    try:
        with os.scandir(root) as entries:
            names = sorted(e.name for e in entries if _usable_table(root, e.name) is not None)
    except OSError:
        return []
    return names[:MAX_TABLES_LISTED]


def _table_name(name: Any, place: str) -> str:
    if not isinstance(name, str) or not TABLE_NAME.match(name):
        raise ApiError(400, f"{place}: the file name of a stopping table in the server's tables directory (letters, "
                       f"digits, '.', '_', '-'; no path), got {json.dumps(name, default=str)[:100]}", place,
                       "invalid_setting")
    return name


def _no_table(name: str, known: list[str], place: str) -> ApiError:
    listed = ", ".join(known[:20]) + (" ..." if len(known) > 20 else "") if known else "none"
    return ApiError(400, f"{place}: no stopping table {name!r} on this server (tables: {listed})", place,
                    "invalid_setting")


def table_file(tables_dir: str, name: Any, place: str) -> tuple[str, tuple[int, int]]:
    """The file of the table a request named (a name in ``tables_dir``, never a path) and its (mtime, size).

    Names with a separator or a leading dot, and links that lead out of the directory, are
    refused: a request can only choose among the tables the operator put there.
    """
    found = _usable_table(Path(tables_dir).resolve(), _table_name(name, place))
    if found is None:
        raise _no_table(name, table_names(tables_dir), place)
    path, st = found
    return str(path), (st.st_mtime_ns, st.st_size)


def loaded_table(tables: Any, name: Any, place: str) -> tuple[Any, str]:
    """The table a request named among those the server has read (a :class:`~.tables.TableSet`), and its sha256."""
    loaded = tables.get(_table_name(name, place))
    if loaded is None:
        why = tables.error(name)
        if why is not None:
            raise ApiError(400, f"{place}: the stopping table {name!r} was refused when the server read it: {why}",
                           place, "invalid_setting")
        raise _no_table(name, tables.names(), place)
    return loaded.table, loaded.sha256


_UNION_TAGS = {"str", "int", "float", "bool", "none", "list", "dict", "constrained-str"}


def located(exc: ValidationError, prefix: str = "") -> ApiError:
    """The first pydantic error as a 400 naming the field: ``messages[0].content``, ``optscale.alpha``."""
    err = exc.errors()[0]
    param = prefix
    for part in err["loc"]:
        if isinstance(part, str) and (part in _UNION_TAGS or "[" in part):
            continue  # pydantic's name of a union member (``stop.str``), not a field of the request
        param += f"[{part}]" if isinstance(part, int) else (f".{part}" if param else str(part))
    if err["type"] == "extra_forbidden":
        message = "unknown or unsupported field"
    elif err["type"] == "missing":
        message = "field required"
    else:
        message = f"{err['msg']} (got {json.dumps(err.get('input'), default=str)[:100]})"
    return ApiError(400, f"{param}: {message}" if param else message, param or None, "invalid_request")



class _RequestOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    n_max: int | None = Field(None, ge=1, description="most samples of the episode (at most the server's max_n_max)")
    deadline_s: float | None = Field(None, gt=0, description="seconds the episode may sample (at most, and by "
                                     "default, the server's max_deadline_s)")
    max_total_tokens: int | None = Field(None, ge=1, description="most completion tokens the episode may generate")
    return_samples: StrictBool = Field(False, description="add every sample to the optscale object")


#: The ``optscale`` object's own keys as JSON Schema properties (added to every policy's settings schema).
REQUEST_OPTIONS_SCHEMA: dict[str, Any] = {
    "policy": {"type": "string", "enum": list(POLICIES.names()), "description": "the policy of the request"},
    **_RequestOptions.model_json_schema()["properties"],
}


@dataclass(frozen=True)
class Options:
    """A request's policy (built and validated), its settings and its own limits."""

    policy: PolicyBase
    settings: dict[str, Any]
    deadline_s: float
    max_total_tokens: int | None
    return_samples: bool

    @property
    def name(self) -> str:
        return self.policy.name


_POLICY_CACHE: collections.OrderedDict[tuple[Any, ...], PolicyBase] = collections.OrderedDict()
_POLICY_CACHE_SIZE = 512


def _policy(name: str, n_max: int, settings: dict[str, Any], stamp: Any = None) -> PolicyBase:
    """The policy for these settings, built once (policies are immutable) and kept for the next requests."""
    key = (name, n_max, json.dumps(settings, sort_keys=True, default=lambda v: f"{type(v).__name__}@{id(v)}"), stamp)
    policy = _POLICY_CACHE.get(key)
    if policy is None:
        policy = _POLICY_CACHE[key] = build_policy(name, n_max, settings)
        while len(_POLICY_CACHE) > _POLICY_CACHE_SIZE:
            _POLICY_CACHE.popitem(last=False)
    return policy


def _at(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _header_settings(raw: str | None) -> dict[str, Any]:
    if raw is None:
        return {}
    if len(raw) > MAX_HEADER_CHARS:
        raise ApiError(400, f"longer than {MAX_HEADER_CHARS} characters", HEADER_SETTINGS, "invalid_request")
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise ApiError(400, f"not valid JSON ({exc})", HEADER_SETTINGS, "invalid_request") from None
    if not isinstance(value, dict):
        raise ApiError(400, "must be a JSON object of settings", HEADER_SETTINGS, "invalid_request")
    if "policy" in value:
        raise ApiError(400, f"name the policy in the {HEADER_POLICY} header", f"{HEADER_SETTINGS}.policy",
                       "invalid_request")
    return value


_JSON_TYPES = {bool: "boolean", str: "string", int: "number", float: "number"}


def _schema_types(prop: dict[str, Any]) -> set[str]:
    """The JSON types a setting's schema admits (empty when it does not say)."""
    found = set()
    if isinstance(prop.get("type"), str):
        found.add(prop["type"])
    for alt in prop.get("anyOf", []) + prop.get("oneOf", []):
        found |= _schema_types(alt)
    return {"number" if t == "integer" else t for t in found}


def _check_type(name: str, key: str, value: Any, place: str) -> None:
    """Refuse a boolean for a number, a number for a boolean, a string for either (pydantic would coerce them)."""
    prop = policy_settings_schema(name)["properties"].get(key)
    given = _JSON_TYPES.get(type(value))
    if prop is None or given is None:
        return  # unknown keys and other shapes: the policy's own validation names them
    types = _schema_types(prop)
    if types and given not in types and not ("enum" in prop and value in prop["enum"]):
        raise ApiError(400, f"{place}: expected {' or '.join(sorted(types))}, got {json.dumps(value)[:100]}", place,
                       "invalid_setting")


def _request_options(config: ServeConfig, own: dict[str, Any], prefix: str) -> _RequestOptions:
    """One level's own options (``n_max``, ``deadline_s`` ...), strictly typed and within the server's limits."""
    try:
        options = _RequestOptions(**own)
    except ValidationError as exc:
        raise located(exc, prefix) from None
    limits = (("n_max", options.n_max, config.max_n_max), ("deadline_s", options.deadline_s, config.max_deadline_s),
              ("max_total_tokens", options.max_total_tokens, config.max_total_tokens))
    for key, value, most in limits:
        if value is not None and most is not None and value > most:
            place = _at(prefix, key)
            limit = key if key == "max_total_tokens" else f"max_{key}"
            raise ApiError(400, f"{place}: {value:g} exceeds this server's {limit} ({most:g})", place,
                           "invalid_setting")
    return options


def _policy_name(value: Any, place: str) -> str:
    name = value.strip() if isinstance(value, str) else value
    if not isinstance(name, str) or name not in POLICIES:
        raise ApiError(404, f"unknown policy {str(name)[:100]!r}; choose from {', '.join(POLICIES)}", place,
                       "policy_not_found")
    return name


def resolve_options(config: ServeConfig, model: str, body_options: dict[str, Any] | None,
                    header_policy: str | None, header_settings: str | None, body_place: str = "optscale",
                    unused: tuple[str, ...] = (), tables: Any = None) -> Options:
    """The request's policy and settings, by precedence; raises 400/404 naming the place of a bad value.

    Every value given is validated at its own level, even one that a higher level overrides
    (a bad value is a client's bug, not a default to fall back from). ``body_place`` names
    where the body's options sit (``optscale``; empty for a body that is the options object
    itself, as that of ``/v1/optscale/plan``); ``unused`` are option keys the endpoint refuses. ``tables``
    (a :class:`~.tables.TableSet`) holds the tables a request may name; without it they are read from
    ``tables_dir`` as named.
    """
    alias = model.partition("+")[2] or None if model != config.model else None
    if model != config.model and (not model.startswith(config.model + "+") or not alias):
        raise ApiError(404, f"the model {model!r} does not exist; this server serves {config.model!r} and its "
                       f"aliases {config.model}+POLICY", "model", "model_not_found")
    body = dict(body_options or {})
    header = _header_settings(header_settings)
    candidates = [(header_policy, HEADER_POLICY), (body.pop("policy", None), _at(body_place, "policy")),
                  (alias, "model"), (config.policy, "policy")]
    name = [_policy_name(value, where) for value, where in candidates if value is not None][0]
    origin: dict[str, str] = {}
    merged: dict[str, Any] = {}
    if name == config.policy:
        merged.update(config.policy_settings)
        origin.update({k: f"policy_settings.{k}" for k in config.policy_settings})
    own: dict[str, Any] = {}
    stamp = None  # the named table's sha256 (or its file's mtime and size): a changed table makes a new policy
    policy = None
    for source, prefix in ((body, body_place), (header, HEADER_SETTINGS)):
        if not source:
            continue
        level: dict[str, Any] = {}
        for key, value in source.items():
            place = _at(prefix, key)
            if key in unused:
                raise ApiError(400, f"{place}: not used here (this endpoint generates nothing)", place,
                               "invalid_setting")
            if key in OPTION_KEYS:
                level[key] = value
                continue
            if key == "table" and config.tables_dir is not None:
                value, stamp = (table_file(config.tables_dir, value, place) if tables is None
                                else loaded_table(tables, value, place))
            elif key in SERVER_ONLY:
                why = " (this server has no tables_dir)" if key == "table" else ""
                raise ApiError(400, f"{place}: a server setting (a file on the server); it cannot be "
                               f"set per request{why}", place, "invalid_setting")
            else:
                _check_type(name, key, value, place)
            merged[key] = value
            origin[key] = place
        given = _request_options(config, level, prefix).model_dump(include=set(level))
        own.update(given)
        origin.update({k: _at(prefix, k) for k in given})
        policy = _build(config, name, own.get("n_max") or config.n_max, merged, stamp, origin, body_place)
    if policy is None:
        policy = _build(config, name, config.n_max, merged, stamp, origin, body_place)
    deadline = own.get("deadline_s") or config.max_deadline_s
    cap = own.get("max_total_tokens") or config.max_total_tokens
    settings = policy.model_dump(mode="json", exclude={"priors"})
    if isinstance(settings.get("table"), str):  # the table's name, not where the server keeps it
        settings["table"] = Path(settings["table"]).name
    return Options(policy, settings, deadline, cap, bool(own.get("return_samples", False)))


def _build(config: ServeConfig, name: str, n_max: int, merged: dict[str, Any], stamp: Any,
           origin: dict[str, str], body_place: str) -> PolicyBase:
    """The policy for the settings of one level and those below it, errors at the place of the bad value."""
    try:
        return _policy(name, n_max, merged, stamp)
    except InputError as exc:
        key = (exc.where or "").removeprefix("settings.")
        param = origin.get(key, body_place or None) if exc.where != "n_max" else origin.get("n_max", "n_max")
        detail = _hide_tables_dir(config, exc.detail)
        raise ApiError(400, f"{param}: {detail}" if param else detail, param, "invalid_setting") from None
    except (TypeError, ValueError) as exc:
        raise ApiError(400, f"invalid settings: {_hide_tables_dir(config, str(exc))}", body_place or None,
                       "invalid_setting") from None


def _hide_tables_dir(config: ServeConfig, text: str) -> str:
    """``text`` without the server's tables directory (a client named the table, not the path)."""
    if config.tables_dir is None:
        return text
    return text.replace(str(Path(config.tables_dir).resolve()) + os.sep, "")

