"""Policies by name, built from validated settings (``--set key=value`` on the CLI)."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from ..errors import InputError
from .common import PolicyBase
from .consistency import AdaptiveSC, EarlyStoppingSC
from .fixed import BestOfN, SelfConsistency
from .optscale import OptScale0, OptScaleT, SequentialOptScale

POLICIES: dict[str, type[PolicyBase]] = {
    cls.name: cls
    for cls in (BestOfN, OptScale0, SequentialOptScale, OptScaleT, SelfConsistency, EarlyStoppingSC, AdaptiveSC)
}


def make_policy(name: str, n_max: int, **settings: Any) -> PolicyBase:
    """Build a policy; unknown names and bad settings raise :class:`InputError` naming the key."""
    cls = POLICIES.get(name)
    if cls is None:
        raise InputError(f"unknown policy {name!r}; choose from {', '.join(POLICIES)}", "--policy")
    if isinstance(n_max, bool) or not isinstance(n_max, int) or n_max < 1:
        raise InputError(f"must be an integer >= 1, got {n_max!r}", "--n-max")
    try:
        return cls(n_max=n_max, **settings)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or name
        flag = "--n-max" if key == "n_max" else f"--set {key}"
        if err["type"] == "extra_forbidden":
            known = ", ".join(k for k in cls.model_fields if k != "n_max")
            raise InputError(f"policy {name!r} has no setting {key!r} (settings: {known})", flag) from None
        raise InputError(f"{err['msg']} (got {err.get('input')!r})", flag) from None


def parse_settings(pairs: list[str] | None) -> dict[str, str]:
    """``["alpha=0.9", "peek=5"]`` -> ``{"alpha": "0.9", "peek": "5"}``; pydantic converts the types."""
    out: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InputError(f"expected key=value, got {pair!r}", "--set")
        out[key.strip()] = value.strip()
    return out
