"""The application layer's policy factory: a policy by name, with the default priors plugged in.

:mod:`optscale.policies` never loads a predictor, so the layers stay one-way: OptScale^t built
with :func:`optscale.policies.make_policy` needs explicit priors. The applications (the CLI,
the live runner, the demo) build policies here instead, where a MAP policy given no priors
gets the packaged default predictor's (loaded on first use, once per process), and
``priors=population:POOL`` becomes a population prior fitted on that calibration pool.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import InputError
from .policies import POLICIES, PolicyBase, make_policy
from .priors import POPULATION, PopulationPriors, PriorArrays, PriorSource

__all__ = ["DefaultPriors", "build_policy", "population_priors", "with_default_priors"]

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

    def priors(self, ids: Sequence[str], questions: Sequence[str | None], meta=None) -> PriorArrays:
        return _default_source().priors(ids, questions, meta)

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


@functools.lru_cache(maxsize=8)
def _population(path: str, mtime: float) -> PopulationPriors:
    from .pools import iter_pool

    scores, ids, questions = [], [], []
    for problem in iter_pool(path, grade_missing=False):
        if problem.samples[0].score is None:
            raise InputError(f"a population prior is fitted on scores, and the calibration pool {path} has none",
                             "settings.priors")
        scores.append([s.score for s in problem.samples])
        ids.append(problem.id)
        questions.append(problem.question)
    return PopulationPriors.fit(scores, ids, questions)


def population_priors(path: str) -> PopulationPriors:
    """The population prior fitted on the calibration pool at ``path`` (strict: it refuses priors for
    the pool's own problems, so nothing it was fitted on can be reported on)."""
    import os

    try:
        mtime = os.stat(path).st_mtime
    except OSError as exc:
        raise InputError(f"calibration pool {path!r}: {exc.strerror or exc}", "settings.priors") from None
    return _population(path, mtime)


def _resolve_priors(settings: dict[str, Any]) -> dict[str, Any]:
    """``priors=population:POOL`` replaced by the prior fitted on POOL; other settings unchanged."""
    value = settings.get("priors")
    if isinstance(value, str) and value.startswith(POPULATION + ":"):
        path = value[len(POPULATION) + 1:]
        if not path:
            raise InputError("population:POOL needs the calibration pool's path", "settings.priors")
        return {**settings, "priors": population_priors(path)}
    return settings


def build_policy(name: str, n_max: int, settings: Mapping[str, Any] | None = None, *,
                 default_priors: bool = True) -> PolicyBase:
    """:func:`~optscale.policies.make_policy` with the packaged predictor's priors for a MAP policy
    given none (unless ``default_priors`` is False). Errors name ``policy``, ``n_max`` and
    ``settings.<key>``. ``priors=population:POOL`` is fitted on the calibration pool POOL."""
    settings = dict(settings or {})
    policy = make_policy(name, n_max, **settings)  # validates name and settings before anything is loaded
    if "priors" in type(policy).model_fields:
        settings = _resolve_priors(settings)
        policy = make_policy(name, n_max, **settings)
    if default_priors and _needs_default_priors(name, settings):
        return make_policy(name, n_max, **with_default_priors(name, settings))
    return policy
