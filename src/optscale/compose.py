"""The application layer's policy factory: a policy by name, with the default priors plugged in.

:mod:`optscale.policies` never loads a predictor, so the layers stay one-way: OptScale^t built
with :func:`optscale.policies.make_policy` needs explicit priors. The applications (the CLI,
the live runner, the demo) build policies here instead, where a MAP policy given no priors
gets the packaged default predictor's (loaded on first use, once per process).
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import InputError
from .policies import POLICIES, PolicyBase, make_policy
from .priors import PriorArrays, PriorSource

__all__ = ["DefaultPriors", "build_policy", "with_default_priors"]

log = logging.getLogger(__name__)

#: What the packaged default predictor needs beyond the core dependencies.
_PREDICTOR_MODULES = ("sklearn", "torch", "sentence_transformers")
_REMEDY = ("pass priors=FILE (a priors JSONL) or install the predictor extra for the packaged default predictor: "
           "pip install 'optscale[predictor]' (install a CPU build of torch first)")


@functools.cache
def _default_source() -> PriorSource:
    try:
        from .predictor import DEFAULT_MODEL, PredictorPriors, load_default

        log.info("loading the packaged default predictor for OptScale^t's priors (%s)", DEFAULT_MODEL)
        return PredictorPriors(load_default())
    except ImportError as exc:
        raise InputError(f"the default predictor cannot be loaded ({exc}); {_REMEDY}", "settings.priors") from None


class DefaultPriors:
    """The packaged default predictor's priors, loaded on first use (a :class:`PriorSource`)."""

    def priors(self, ids: Sequence[str], questions: Sequence[str | None]) -> PriorArrays:
        return _default_source().priors(ids, questions)

    def __repr__(self) -> str:
        return "DefaultPriors()"


def _needs_default_priors(name: str, settings: Mapping[str, Any]) -> bool:
    """Whether policy ``name`` with ``settings`` makes a MAP estimate and was given no priors."""
    fields = POLICIES.get(name, "policy").model_fields
    if "priors" not in fields or settings.get("priors") is not None:
        return False
    return str(settings.get("estimator", fields["estimator"].default)) == "map"


def with_default_priors(name: str, settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``settings`` plus ``priors=DefaultPriors()`` where policy ``name`` needs them.

    For engines that build policies themselves from a name and settings (the sweep). Without
    the predictor extra this raises :class:`InputError` at ``settings.priors`` at once, before
    any work, naming the remedy.
    """
    settings = dict(settings or {})
    if not _needs_default_priors(name, settings):
        return settings
    missing = [m for m in _PREDICTOR_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise InputError(f"policy {name!r} needs priors and {', '.join(missing)} is not installed; {_REMEDY}",
                         "settings.priors")
    return {**settings, "priors": DefaultPriors()}


def build_policy(name: str, n_max: int, settings: Mapping[str, Any] | None = None, *,
                 default_priors: bool = True) -> PolicyBase:
    """:func:`~optscale.policies.make_policy` with the packaged predictor's priors for a MAP policy
    given none (unless ``default_priors`` is False). Errors name ``policy``, ``n_max`` and
    ``settings.<key>``."""
    settings = dict(settings or {})
    policy = make_policy(name, n_max, **settings)  # validates name and settings before anything is loaded
    if default_priors and _needs_default_priors(name, settings):
        return make_policy(name, n_max, **with_default_priors(name, settings))
    return policy
