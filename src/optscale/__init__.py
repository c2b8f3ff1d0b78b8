"""optscale: probabilistically optimal inference-time scaling.

Choose, per problem, how many LLM samples Best-of-N needs: verifier scores are modelled as a
normal truncated to [0, 1], its parameters are estimated from a few samples, and the least N
that beats a target score with probability ``alpha`` follows in closed form.

The names below are imported on first use, so that ``import optscale.cli`` (and every other
light submodule) does not pay for scipy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:
    from .fit import FitFlag, FitResult, fit_map, fit_mle, moments_to_params
    from .stats import min_samples

# A literal table: tests/test_layers.py reads it to hold these imports by name to the layer contracts.
_LAZY = {"FitFlag": "fit", "FitResult": "fit", "fit_map": "fit", "fit_mle": "fit", "moments_to_params": "fit",
         "min_samples": "stats"}
__all__ = ["FitFlag", "FitResult", "fit_map", "fit_mle", "min_samples", "moments_to_params", "__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
