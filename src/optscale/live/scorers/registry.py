"""The scorer registry: what each scorer is called, its settings, its help and how it is built.

The CLI's ``--scorer`` choices and ``--scorer-set`` help, the run configuration's validation
and the docs all derive from :data:`SCORERS`. Each server gets only its own key: a judge or
PRM server gets the scorer's ``api_key`` (or its environment variable), never the
generator's - :class:`ScorerContext` carries no key at all.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from ...errors import InputError
from ...registry import Registry
from ..openai import OpenAIGenerator
from ..types import ClientSettings
from .base import Scorer
from .confidence import ConfidenceScorer
from .judge import JudgeScorer, JudgeSettings
from .local_prm import LocalPrmScorer, LocalPrmSettings
from .vllm_prm import PrmSettings, VllmPrmScorer

__all__ = ["SCORERS", "ScorerSpec", "ScorerContext", "scorer_settings", "build_scorer"]


@dataclass(frozen=True)
class ScorerContext:
    """What a scorer may take from the run: the generator's servers and model, and client settings.

    The client settings are the run's timeouts and retries, always *without* a key (one given
    here is dropped): the generator's key never reaches a scorer's server.
    """

    base_urls: tuple[str, ...]
    model: str
    client: ClientSettings = ClientSettings()

    def __post_init__(self) -> None:
        object.__setattr__(self, "base_urls", tuple(self.base_urls))
        if self.client.api_key is not None:
            object.__setattr__(self, "client", self.client.model_copy(update={"api_key": None}))


@dataclass(frozen=True)
class ScorerSpec:
    """One kind of scorer: ``settings`` is the model of its ``--scorer-set`` keys (None: no settings)."""

    help: str
    build: Callable[[Any, ScorerContext], Scorer]
    settings: type[BaseModel] | None = None
    api_key_env: str | None = None
    """Environment variable read for ``api_key`` when it is not given."""


SCORERS: Registry[ScorerSpec] = Registry("scorer")


def _client(context: ScorerContext, settings: JudgeSettings | PrmSettings) -> ClientSettings:
    return context.client.model_copy(update={"api_key": settings.api_key})


def _judge(s: JudgeSettings, context: ScorerContext) -> Scorer:
    judge = OpenAIGenerator(s.base_url or context.base_urls, s.model or context.model, kind="chat",
                            client=_client(context, s), names="scorer.")
    return JudgeScorer(judge, concurrency=s.concurrency, **({"prompt": s.prompt} if s.prompt else {}))


def _prm(s: PrmSettings, context: ScorerContext) -> Scorer:
    client = OpenAIGenerator(s.base_url, s.model, client=_client(context, s), names="scorer.")
    return VllmPrmScorer(client, markup=s.markup, path=s.path, aggregate=s.aggregate, separator=s.separator,
                         step_tag=s.step_tag, system=s.system, max_steps=s.max_steps)


def _local_prm(s: LocalPrmSettings, context: ScorerContext) -> Scorer:
    return LocalPrmScorer(s.model, device=s.device, batch_size=s.batch_size, dtype=s.dtype, aggregate=s.aggregate,
                          separator=s.separator, step_tag=s.step_tag, system=s.system, max_steps=s.max_steps)


SCORERS.add("prm", ScorerSpec(
    "a process reward model served by vLLM's pooling API: the mean (or min, last, product) of its step scores",
    _prm, PrmSettings, "OPTSCALE_PRM_API_KEY"))
SCORERS.add("prm-local", ScorerSpec(
    "the same PRM run in this process with transformers and torch (installed separately)",
    _local_prm, LocalPrmSettings))
SCORERS.add("judge", ScorerSpec(
    "a chat model asked whether the solution is correct: P(Yes) from its first token's logprobs",
    _judge, JudgeSettings, "OPTSCALE_JUDGE_API_KEY"))
SCORERS.add("confidence", ScorerSpec(
    "no second model: the geometric mean of the generator's own token probabilities",
    lambda _settings, _context: ConfidenceScorer()))


def _unescape(text: str) -> str:
    """``\\n`` and friends as typed on a command line, turned into the characters."""
    try:
        return text.encode("latin-1", "backslashreplace").decode("unicode_escape")
    except UnicodeDecodeError as exc:
        raise ValueError(f"bad backslash escape ({exc.reason})") from None


def scorer_settings(kind: str, values: Mapping[str, Any] | None = None,
                    env: Mapping[str, str] | None = None) -> BaseModel | None:
    """The validated, normalised settings of scorer ``kind`` (None for a scorer without settings).

    ``base_url`` may be a comma-separated string; ``separator`` and ``step_tag`` may carry
    backslash escapes (``\\n\\n``); ``api_key`` defaults to the scorer's environment variable
    (read from ``env``, default ``os.environ``). Errors name ``scorer`` or ``scorer.<key>``.
    """
    spec = SCORERS.get(kind, "scorer")
    values = dict(values or {})
    model = spec.settings
    if model is None:
        if values:
            raise InputError(f"scorer {kind!r} has no settings (got {', '.join(map(str, values))})",
                             f"scorer.{next(iter(values))}")
        return None
    if isinstance(values.get("base_url"), str):
        values["base_url"] = [u.strip() for u in values["base_url"].split(",") if u.strip()]
    for key in ("separator", "step_tag"):
        if isinstance(values.get(key), str) and "\\" in values[key]:
            try:
                values[key] = _unescape(values[key])
            except ValueError as exc:
                raise InputError(str(exc), f"scorer.{key}") from None
    if spec.api_key_env and values.get("api_key") is None:
        key = (os.environ if env is None else env).get(spec.api_key_env)
        if key:
            values["api_key"] = key
    try:
        return model(**values)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        field = str(err["loc"][0]) if err["loc"] else ""
        if err["type"] == "extra_forbidden":
            msg = f"scorer {kind!r} has no setting {key!r} (settings: {', '.join(model.model_fields)})"
        elif err["type"] == "missing":
            msg = f"scorer {kind!r} needs {key}=... ({model.model_fields[field].description})"
        elif field == "api_key":  # never echo a key
            msg = str(err["ctx"]["error"]) if err["type"] == "value_error" else err["msg"]
        else:
            msg = f"{err['msg']} (got {str(err.get('input'))[:100]!r})"
        raise InputError(msg, f"scorer.{field}" if field else "scorer") from None


def build_scorer(kind: str, settings: BaseModel | Mapping[str, Any] | None, context: ScorerContext) -> Scorer:
    """The scorer ``kind`` with ``settings`` (a model from :func:`scorer_settings`, or raw values)."""
    spec = SCORERS.get(kind, "scorer")
    if settings is None or isinstance(settings, Mapping):
        settings = scorer_settings(kind, settings)
    elif spec.settings is None or not isinstance(settings, spec.settings):
        raise InputError(f"{type(settings).__name__} are not the settings of scorer {kind!r}", "scorer")
    return spec.build(settings, context)
