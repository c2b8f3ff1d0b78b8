"""The configuration of a live run, from a TOML/YAML file and command-line flags, and what it builds.

One validated :class:`RunConfig` describes a run. Its :meth:`RunConfig.identity` is what
makes stored samples comparable (dataset, model, prompt, sampling, scorer, policy) and is
checked when a run folder is resumed; everything else (server URLs, concurrency, timeouts)
may change between sessions. API keys are never written to the run folder.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import InputError
from .datasets import DatasetSpec
from .generators import ClientSettings, GenerationSettings, OpenAIGenerator
from .prompts import BOXED_INSTRUCTION, PromptTemplate
from .sampler import SamplerSettings
from .scorers import Aggregate, ConfidenceScorer, JudgeScorer, LocalPrmScorer, Scorer, VllmPrmScorer

__all__ = ["RunConfig", "load_config_file", "build_config", "build_generator", "build_scorer", "scorer_settings_help"]

ScorerKind = Literal["prm", "prm-local", "judge", "confidence"]


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class JudgeSettings(_Settings):
    """``--scorer-set`` keys of the judge scorer."""

    base_url: list[str] | None = Field(None, description="judge server(s); default: the generator's")
    model: str | None = Field(None, description="judge model; default: the generator's model")
    prompt: str | None = Field(None, description="judge prompt with {question} and {solution}")
    concurrency: int = Field(8, ge=1, description="judge requests under way at once")


class PrmSettings(_Settings):
    """``--scorer-set`` keys of the vLLM PRM scorer."""

    base_url: list[str] = Field(description="the vLLM server(s) of the PRM, e.g. http://host:8001/v1")
    model: str = Field(description="the PRM's served name, e.g. Qwen/Qwen2.5-Math-PRM-7B")
    aggregate: Aggregate = "mean"
    separator: str = "\n\n"
    step_tag: str = "<extra_0>"
    system: str | None = BOXED_INSTRUCTION
    markup: Literal["chatml", "llama3", "plain"] = "chatml"
    path: str = "/pooling"
    max_steps: int = Field(64, ge=1)


class LocalPrmSettings(_Settings):
    """``--scorer-set`` keys of the in-process PRM scorer."""

    model: str = Field(description="a local path or hub name of the PRM (transformers)")
    aggregate: Aggregate = "mean"
    separator: str = "\n\n"
    step_tag: str = "<extra_0>"
    system: str | None = BOXED_INSTRUCTION
    device: str | None = None
    batch_size: int = Field(8, ge=1)
    dtype: str = "auto"
    max_steps: int = Field(64, ge=1)


SCORER_SETTINGS: dict[str, type[_Settings] | None] = {
    "judge": JudgeSettings, "prm": PrmSettings, "prm-local": LocalPrmSettings, "confidence": None,
}


def scorer_settings_help() -> str:
    parts = []
    for kind, model in SCORER_SETTINGS.items():
        keys = ", ".join(model.model_fields) if model else "none"
        parts.append(f"{kind}: {keys}")
    return "; ".join(parts)


class RunConfig(BaseModel):
    """Everything ``optscale run`` needs; field names are the flags' long names with underscores."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: str
    out: str
    base_url: list[str] = Field(min_length=1)
    model: str = Field(min_length=1)
    scorer: ScorerKind
    scorer_settings: dict[str, Any] = Field(default_factory=dict)
    policy: str = "optscale"
    n_max: int = Field(16, ge=1)
    policy_settings: dict[str, Any] = Field(default_factory=dict)
    api_key: str | None = None
    endpoint: Literal["chat", "completion"] = "chat"
    system: str | None = None
    template: str = "{question}\n" + BOXED_INSTRUCTION
    chat_markup: Literal["chatml", "llama3", "plain"] = "chatml"
    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(1024, ge=1)
    stop: list[str] = Field(default_factory=list)
    stream: bool = True
    seed: int | None = None
    answer_style: Literal["auto", "boxed", "number"] = "auto"
    zero_unanswered: bool = True
    concurrency: int = Field(8, ge=1)
    in_flight: int = Field(4, ge=1)
    problems_in_flight: int | None = Field(None, ge=1)
    n_per_request: int = Field(1, ge=1)
    max_failures: int = Field(3, ge=1)
    timeout: float = Field(600.0, gt=0)
    idle_timeout: float = Field(60.0, gt=0)
    retries: int = Field(5, ge=0)
    split: str = "test"
    subset: str | None = None
    offset: int = Field(0, ge=0)
    limit: int | None = Field(None, ge=1)
    question_field: str = "question"
    answer_field: str = "answer"
    id_field: str = "id"

    # -- pieces ----------------------------------------------------------------------------
    def dataset_spec(self) -> DatasetSpec:
        return DatasetSpec(self.dataset, self.question_field, self.answer_field, self.id_field, self.split,
                           self.subset, self.offset, self.limit)

    def template_obj(self) -> PromptTemplate:
        return PromptTemplate(self.template, self.system, self.chat_markup)

    def generation(self) -> GenerationSettings:
        return GenerationSettings(temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_tokens,
                                  stop=tuple(self.stop), stream=self.stream, seed=self.seed)

    def client(self) -> ClientSettings:
        return ClientSettings(timeout=self.timeout, idle_timeout=self.idle_timeout, retries=self.retries,
                              api_key=self.api_key, max_connections=max(self.concurrency, 8) * 2)

    def sampler(self) -> SamplerSettings:
        return SamplerSettings(concurrency=self.concurrency, in_flight=self.in_flight,
                               problems_in_flight=self.problems_in_flight, n_per_request=self.n_per_request,
                               max_failures=self.max_failures, answer_style=self.answer_style,
                               zero_unanswered=self.zero_unanswered)

    def scorer_config(self) -> _Settings | None:
        model = SCORER_SETTINGS[self.scorer]
        if model is None:
            if self.scorer_settings:
                raise InputError(f"scorer {self.scorer!r} has no settings (got {', '.join(self.scorer_settings)})",
                                 "--scorer-set")
            return None
        values = dict(self.scorer_settings)
        if isinstance(values.get("base_url"), str):
            values["base_url"] = [u for u in values["base_url"].split(",") if u]
        for key in ("separator", "step_tag"):
            if isinstance(values.get(key), str) and "\\" in values[key]:
                values[key] = values[key].encode("latin-1", "backslashreplace").decode("unicode_escape")
        try:
            return model(**values)
        except ValidationError as exc:
            err = exc.errors()[0]
            key = ".".join(str(p) for p in err["loc"])
            if err["type"] == "extra_forbidden":
                msg = f"scorer {self.scorer!r} has no setting {key!r} (settings: {', '.join(model.model_fields)})"
            elif err["type"] == "missing":
                msg = f"scorer {self.scorer!r} needs {key}=... ({model.model_fields[key].description})"
            else:
                msg = f"{key}: {err['msg']} (got {err.get('input')!r})"
            raise InputError(msg, "--scorer-set") from None

    def identity(self) -> dict[str, Any]:
        """What samples depend on; a resumed run must match it exactly."""
        scorer = self.scorer_config()
        scorer_identity = scorer.model_dump(exclude={"base_url", "concurrency", "device", "batch_size"}) \
            if scorer else {}
        source = Path(self.dataset).expanduser()
        return {
            "dataset": str(source.resolve()) if source.exists() else self.dataset,
            "split": self.split, "subset": self.subset, "question_field": self.question_field,
            "answer_field": self.answer_field, "id_field": self.id_field,
            "model": self.model, "endpoint": self.endpoint, "system": self.system, "template": self.template,
            "chat_markup": self.chat_markup if self.endpoint == "completion" else None,
            "temperature": self.temperature, "top_p": self.top_p, "max_tokens": self.max_tokens,
            "stop": list(self.stop), "seed": self.seed, "answer_style": self.answer_style,
            "zero_unanswered": self.zero_unanswered,
            "scorer": self.scorer, "scorer_settings": scorer_identity,
            "policy": self.policy, "n_max": self.n_max, "policy_settings": dict(sorted(self.policy_settings.items())),
        }

    def runtime(self) -> dict[str, Any]:
        """The whole configuration as given this session (never the API key)."""
        return self.model_dump(exclude={"api_key"})


def load_config_file(path: str | Path) -> dict[str, Any]:
    """A TOML or YAML config file as a dict (keys like the flags, with underscores)."""
    path = Path(path)
    if not path.is_file():
        raise InputError("config file not found", str(path))
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".toml":
            data = tomllib.loads(text)
        elif path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        elif path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            raise InputError("use a .toml, .yaml or .json config file", str(path))
    except (tomllib.TOMLDecodeError, ValueError) as exc:
        raise InputError(f"cannot parse: {exc}", str(path)) from None
    except ImportError:
        raise InputError("YAML config files need PyYAML (pip install pyyaml)", str(path)) from None
    except Exception as exc:  # yaml.YAMLError without importing yaml up front
        raise InputError(f"cannot parse: {exc}", str(path)) from None
    if not isinstance(data, dict):
        raise InputError("expected a table of settings", str(path))
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def build_config(file_values: dict[str, Any], flag_values: dict[str, Any]) -> RunConfig:
    """Flags over file values over defaults, validated; errors name the flag."""
    values = dict(file_values)
    for key in ("policy_settings", "scorer_settings"):
        merged = dict(values.get(key) or {})
        merged.update(flag_values.pop(key, None) or {})
        values[key] = merged
    values.update({k: v for k, v in flag_values.items() if v is not None and v != []})
    if isinstance(values.get("base_url"), str):
        values["base_url"] = [values["base_url"]]
    if isinstance(values.get("stop"), str):
        values["stop"] = [values["stop"]]
    try:
        return RunConfig(**values)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = str(err["loc"][0]) if err["loc"] else "config"
        flag = "DATASET" if key == "dataset" else "--" + key.replace("_", "-")
        if err["type"] == "extra_forbidden":
            raise InputError(f"unknown setting {key!r}", "config file") from None
        if err["type"] == "missing":
            raise InputError("required (give the flag or set it in --config)", flag) from None
        raise InputError(f"{err['msg']} (got {err.get('input')!r})", flag) from None


def build_generator(config: RunConfig) -> OpenAIGenerator:
    return OpenAIGenerator(config.base_url, config.model, config.generation(), kind=config.endpoint,
                           client=config.client())


def build_scorer(config: RunConfig) -> Scorer:
    """The scorer of ``config``; judges and PRM clients get their own connections."""
    settings = config.scorer_config()
    if isinstance(settings, JudgeSettings):
        judge = OpenAIGenerator(settings.base_url or config.base_url, settings.model or config.model, kind="chat",
                                client=config.client())
        kwargs = {"prompt": settings.prompt} if settings.prompt else {}
        return JudgeScorer(judge, concurrency=settings.concurrency, **kwargs)
    if isinstance(settings, PrmSettings):
        client = OpenAIGenerator(settings.base_url, settings.model, client=config.client())
        return VllmPrmScorer(client, markup=settings.markup, path=settings.path, aggregate=settings.aggregate,
                             separator=settings.separator, step_tag=settings.step_tag, system=settings.system,
                             max_steps=settings.max_steps)
    if isinstance(settings, LocalPrmSettings):
        return LocalPrmScorer(settings.model, device=settings.device, batch_size=settings.batch_size,
                              dtype=settings.dtype, aggregate=settings.aggregate, separator=settings.separator,
                              step_tag=settings.step_tag, system=settings.system, max_steps=settings.max_steps)
    return ConfidenceScorer()
