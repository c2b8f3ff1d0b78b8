"""Policies by name, built from validated settings.

:data:`POLICIES` is the one list of policies: the CLI's ``--policy`` help and choices, the
settings help, the JSON Schema of each policy's settings and :func:`make_policy` all derive
from it. A policy registers itself where it is defined (``@register_policy`` on its class), or
from another package through an entry point of the group ``optscale.policies``::

    [project.entry-points."optscale.policies"]
    my-rule = "my_package.rules:MyRule"   # a PolicyBase subclass whose ``name`` is "my-rule"

Entry points are loaded on the first lookup or listing; a broken one raises
:class:`~optscale.errors.InputError` naming it. This module imports no policy.

Errors name the library's arguments (``policy``, ``n_max``, ``settings.<key>``); each CLI
command translates them to its flags.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from ..checks import check_n_max
from ..errors import InputError
from ..registry import Registry

__all__ = ["POLICIES", "PLUGIN_GROUP", "make_policy", "parse_settings", "policy_settings_schema",
           "refuse_bool_numbers", "register_policy", "settings_help"]

#: Entry-point group through which other packages add policies.
PLUGIN_GROUP = "optscale.policies"
#: The paper's methods lead every listing, in this order; the others follow in registration order.
LISTED_FIRST = ("bon", "optscale0", "optscale", "optscale-t", "sc", "esc", "asc")

P = typing.TypeVar("P", bound=type)


def _policy_class(name: str, obj: Any) -> Any:
    """``obj`` if it is a policy class called ``name`` (what :class:`~optscale.policies.PolicyBase`
    subclasses are: a pydantic model with ``n_max`` that starts episodes and replays batches)."""
    if not (isinstance(obj, type) and issubclass(obj, BaseModel) and "n_max" in obj.model_fields
            and all(callable(getattr(obj, m, None)) for m in ("start", "replay", "replay_stops"))):
        raise TypeError(f"{obj!r} is not a policy class (a subclass of optscale.policies.PolicyBase)")
    if getattr(obj, "name", None) != name:
        raise ValueError(f"the class {obj.__qualname__} is named {getattr(obj, 'name', None)!r}, not {name!r}")
    return obj


#: Policy classes (subclasses of :class:`~optscale.policies.PolicyBase`) by name.
POLICIES: Registry[type] = Registry("policy", first=LISTED_FIRST, group=PLUGIN_GROUP,
                                                check=_policy_class)


def register_policy(cls: P) -> P:
    """Class decorator: register a policy under its ``name`` (where the policy is defined)."""
    return POLICIES.add(cls.name, _policy_class(cls.name, cls))


def _settings(cls: type) -> list[str]:
    return [k for k in cls.model_fields if k != "n_max"]


def make_policy(name: str, n_max: int, **settings: Any) -> Any:
    """Build a policy; unknown names and bad settings raise :class:`InputError` naming the key."""
    cls = POLICIES.get(name, "policy")
    n_max = check_n_max(n_max)
    refuse_bool_numbers(cls, settings, lambda loc: "settings." + ".".join(loc))
    try:
        return cls(n_max=n_max, **settings)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        where = "n_max" if key == "n_max" else f"settings.{key}" if key else "settings"
        if err["type"] == "extra_forbidden":
            raise InputError(f"policy {name!r} has no setting {key!r} (settings: {', '.join(_settings(cls))})",
                             where) from None
        message = str(err["ctx"]["error"]) if err["type"] == "value_error" else err["msg"]
        got = _shown(err.get("input"))
        raise InputError(f"{message} (got {got})" if got else message, where) from None


def _shown(value: Any, limit: int = 200) -> str | None:
    """A rejected value as the error shows it: plain values only (a stopping table's repr runs to
    kilobytes), cut at ``limit`` characters."""
    if value is None or not isinstance(value, (str, int, float)):
        return None
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def parse_settings(pairs: list[str] | None) -> dict[str, str]:
    """``["alpha=0.9", "peek=5"]`` -> ``{"alpha": "0.9", "peek": "5"}``; pydantic converts the types.

    A key given twice is an error rather than a silent last-one-wins."""
    out: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InputError(f"expected key=value, got {pair!r}", "settings")
        if key in out:
            raise InputError(f"setting {key!r} is given twice ({out[key]!r} and {value.strip()!r}); give it once",
                             "settings")
        out[key] = value.strip()
    return out


def policy_settings_schema(name: str) -> dict:
    """JSON Schema of a policy's settings (everything but ``n_max``), from its pydantic model."""
    cls = POLICIES.get(name, "policy")
    schema = cls.model_json_schema()
    schema["properties"].pop("n_max", None)
    schema["required"] = [k for k in schema.get("required", []) if k != "n_max"]
    if not schema["required"]:
        del schema["required"]
    schema["title"] = name
    schema["description"] = " ".join((cls.__doc__ or name).strip().split("\n\n")[0].split())  # its first paragraph
    return schema


def settings_help() -> str:
    """One line naming each policy's settings, for the CLI's ``--set`` help."""
    return "; ".join(f"{name}: {', '.join(_settings(cls))}" for name, cls in POLICIES.items())


def _kinds(annotation: Any) -> set[Any]:
    """The types a field annotation admits, unions and ``Annotated`` unwrapped (``int | None`` -> {int, None})."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return set().union(*(_kinds(arg) for arg in typing.get_args(annotation)))
    if origin is typing.Annotated:
        return _kinds(typing.get_args(annotation)[0])
    return {annotation}


def refuse_bool_numbers(model: type[BaseModel], values: Mapping[str, Any], place: Callable[[tuple[str, ...]], str],
                        loc: tuple[str, ...] = ()) -> None:
    """Refuse true/false given for a number setting of ``model`` (and of its nested models).

    pydantic reads ``n_max: true`` as 1 (a bool is an int in Python), so a typo in a config
    file would run quietly with another value. ``place(loc)`` names the setting in the error.
    """
    for key, value in values.items():
        field = model.model_fields.get(key)
        if field is None:
            continue
        kinds = _kinds(field.annotation)
        if isinstance(value, bool) and bool not in kinds and kinds & {int, float}:
            raise InputError(f"must be a number, not {str(value).lower()}", place((*loc, key)))
        nested = [k for k in kinds if isinstance(k, type) and issubclass(k, BaseModel)]
        if isinstance(value, Mapping) and nested:
            refuse_bool_numbers(nested[0], value, place, (*loc, key))
