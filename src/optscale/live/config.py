"""The configuration of a live run, composed of the settings models, and what it builds.

:class:`RunConfig` holds the run's own fields (folder, servers, model, prompt, policy, scorer)
and one settings model per part: :class:`~optscale.live.datasets.DatasetSpec`,
:class:`~optscale.live.types.GenerationSettings`, :class:`~optscale.live.types.ClientSettings`
and :class:`~optscale.live.sampler.SamplerSettings`; policy and scorer settings are validated
by the policy's and the scorer's own models. Those models are the one source of defaults and
descriptions (the CLI's help is generated from them).

Config files and flags use flat names (``temperature``, ``limit``, ``concurrency``: the
flags' long names with underscores), mapped onto the models by :data:`FLAT`; a file may also
give a model's fields as a table (``[client] backoff = 1``). Errors name the flat key (or
``section.key``), ``policy_settings.<key>`` and ``scorer_settings.<key>``.

:meth:`RunConfig.identity` is what makes stored samples comparable (dataset, model, prompt,
sampling, scorer, policy), computed from validated, normalised settings, and is checked when
a run folder is resumed; everything else (server URLs, keys, concurrency, timeouts, the engine
and its Ray settings) may change between sessions. Keys are never written anywhere and URLs lose their credentials.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import InputError
from ..io import read_text
from .. import defaults
from ..policies import make_policy
from ..policies.registry import refuse_bool_numbers
from ..policies.common import N_MAX_LIMIT
from .datasets import DatasetSpec
from .openai import OpenAIGenerator
from .prompts import BOXED_INSTRUCTION, PromptTemplate
from .sampler import SamplerSettings
from .scorers import SCORERS, Scorer, ScorerContext, build_scorer, scorer_settings
from .secrets import redact_url, url_secrets
from .transport import check_credentials, check_url
from .types import ClientSettings, EndpointKind, GenerationSettings

__all__ = ["FLAT", "RunConfig", "build_config", "build_generator", "build_run_scorer", "load_config_file",
           "refuse_bool_numbers", "setting_places"]

#: Flat names of config files and flags -> (settings model field of :class:`RunConfig`, its field).
FLAT: dict[str, tuple[str, str]] = {
    "dataset": ("dataset", "source"),
    **{k: ("dataset", k) for k in ("question_field", "answer_field", "id_field", "split", "subset", "offset",
                                   "limit")},
    **{k: ("generation", k) for k in ("temperature", "top_p", "max_tokens", "stop", "stream", "seed")},
    **{k: ("client", k) for k in ("api_key", "timeout", "idle_timeout", "retries")},
    **{k: ("sampler", k) for k in ("concurrency", "in_flight", "problems_in_flight", "n_per_request",
                                   "max_failures", "answer_style", "zero_unanswered")},
}
_SECTIONS = ("dataset", "generation", "client", "sampler")
_FLAT_NAME = {place: name for name, place in FLAT.items()}
# Scorer settings that may change between sessions (where and how fast, not what is scored).
_SCORER_RUNTIME = {"base_url", "concurrency", "device", "batch_size", "api_key"}


class RunConfig(BaseModel):
    """Everything ``optscale run`` needs; see :data:`FLAT` for the flat names of the models' fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    out: str = Field(min_length=1, description="run folder; an existing one is resumed")
    base_url: list[str] = Field(min_length=1, description="OpenAI-compatible server, e.g. "
                                "http://127.0.0.1:8000/v1; several for replicas")
    model: str = Field(min_length=1, description="model name as the server serves it")
    endpoint: EndpointKind = Field("chat", description="chat (the server applies the chat template) or completion")
    system: str | None = Field(None, description="system prompt")
    template: str = Field("{question}\n" + BOXED_INSTRUCTION,
                          description="user message with {question}; the default asks for the answer in \\boxed{}")
    chat_markup: Literal["chatml", "llama3", "plain"] = Field(
        "chatml", description="chat markup written out for the completion endpoint: chatml, llama3 or plain")
    scorer: str = Field(description="how responses are scored")
    scorer_settings: dict[str, Any] = Field(default_factory=dict, description="settings of the scorer")
    policy: str = Field(defaults.POLICY, description="the policy deciding how many samples each problem gets")
    n_max: int = Field(defaults.N_MAX, ge=1, le=N_MAX_LIMIT, description="most samples per problem")
    policy_settings: dict[str, Any] = Field(default_factory=dict, description="settings of the policy")
    dataset: DatasetSpec
    generation: GenerationSettings = GenerationSettings()
    client: ClientSettings = ClientSettings()
    sampler: SamplerSettings = SamplerSettings()
    # Where the run executes: recorded in the runtime, never in the identity, so a run may resume on another engine.
    engine: Literal["local", "ray"] = Field(
        "local", description="local (one process) or ray (problems sharded over Ray actors; the ray extra)")
    ray_address: str | None = Field(None, min_length=1, description="Ray cluster to join, e.g. ray://HEAD:10001 "
                                    "or auto; default: a local Ray started for the run")
    actors: int = Field(2, ge=1, le=10_000, description="Ray actors the problems are sharded over; each runs "
                        "the sampler and scorer with the concurrency settings")
    actor_gpus: float = Field(0.0, ge=0, le=1024, description="GPUs each Ray actor reserves (for an in-process "
                              "scorer such as prm-local)")

    _known_scorer = field_validator("scorer")(lambda kind: known_scorer(kind))
    _urls = field_validator("base_url")(lambda urls: server_urls(urls))

    # -- validated, normalised views --------------------------------------------------------
    def template_obj(self) -> PromptTemplate:
        return PromptTemplate(self.template, self.system, self.chat_markup)

    def policy_config(self) -> dict[str, Any]:
        """The policy settings as the policy's model reads them (``s_min=0.90`` -> ``0.9``)."""
        return _policy_settings(self.policy, self.n_max, self.policy_settings)

    def scorer_config(self) -> BaseModel | None:
        """The scorer's validated settings model (None for a scorer without settings)."""
        return validated_scorer(self.scorer, self.scorer_settings)

    def identity(self) -> dict[str, Any]:
        """What samples depend on, from validated settings; a resumed run must match it exactly."""
        d, g, s = self.dataset, self.generation, self.sampler
        source = Path(d.source).expanduser()
        return {
            "dataset": str(source.resolve()) if source.exists() else d.source,
            "split": d.split, "subset": d.subset, "question_field": d.question_field,
            "answer_field": d.answer_field, "id_field": d.id_field,
            "model": self.model, "endpoint": self.endpoint, "system": self.system, "template": self.template,
            "chat_markup": self.chat_markup if self.endpoint == "completion" else None,
            "temperature": g.temperature, "top_p": g.top_p, "max_tokens": g.max_tokens,
            "stop": list(g.stop), "seed": g.seed, "answer_style": s.answer_style,
            "zero_unanswered": s.zero_unanswered,
            "scorer": self.scorer, "scorer_settings": _scorer_identity(self.scorer_config()),
            "policy": self.policy, "n_max": self.n_max, "policy_settings": self.policy_config(),
        }

    def normalise_identity(self, stored: dict[str, Any]) -> dict[str, Any]:
        """A stored identity with its settings normalised as :meth:`identity` does.

        Older versions stored policy settings as typed (``"0.9"``); a folder they wrote
        resumes as long as its settings mean the same. Settings that no longer validate are
        left as stored (and then differ).
        """
        out = dict(stored)
        try:
            if isinstance(stored.get("policy_settings"), dict):
                out["policy_settings"] = _policy_settings(stored.get("policy"), stored.get("n_max"),
                                                          stored["policy_settings"])
            if isinstance(stored.get("scorer_settings"), dict) and stored.get("scorer") in SCORERS:
                out["scorer_settings"] = _scorer_identity(scorer_settings(
                    stored["scorer"], _with_placeholders(stored["scorer"], stored["scorer_settings"]), env={}))
        except InputError:
            pass
        return out

    def runtime(self) -> dict[str, Any]:
        """This session's whole configuration in flat names, without keys and URL credentials."""
        dumped = self.model_dump(mode="json", exclude={"dataset", "generation", "client", "sampler"})
        for name, (section, key) in FLAT.items():
            if name != "api_key":
                dumped[name] = getattr(getattr(self, section), key)
        dumped["stop"] = list(dumped["stop"])
        dumped["base_url"] = [redact_url(u) for u in self.base_url]
        scorer = self.scorer_config()
        dumped["scorer_settings"] = scorer.model_dump(mode="json") if scorer is not None else {}
        dumped["policy_settings"] = self.policy_config()
        return json.loads(json.dumps(dumped))

    def secrets(self) -> list[str]:
        """Every key and URL credential of this configuration (to mask them in what is stored or shown)."""
        return config_secrets(self.client, self.scorer_config(), self.base_url)


def _policy_settings(policy: Any, n_max: Any, settings: dict[str, Any]) -> dict[str, Any]:
    try:
        built = make_policy(policy, n_max, **settings)
    except InputError as exc:
        raise exc.renamed({"settings": "policy_settings", "settings.": "policy_settings."}) from None
    # Only values that differ from the policy's defaults: a default given explicitly is the same run.
    return dict(sorted(built.model_dump(mode="json", include=set(settings), exclude_defaults=True).items()))


def _scorer_identity(settings: BaseModel | None) -> dict[str, Any]:
    return settings.model_dump(mode="json", exclude=_SCORER_RUNTIME) if settings is not None else {}


def _with_placeholders(kind: str, values: dict[str, Any]) -> dict[str, Any]:
    """Stored scorer settings lack the runtime fields; required ones get a stand-in to validate."""
    model = SCORERS.get(kind, "scorer").settings
    filled = dict(values)
    if model is not None:
        for name in _SCORER_RUNTIME & {n for n, f in model.model_fields.items() if f.is_required()}:
            filled[name] = ["http://stored.invalid/v1"] if name == "base_url" else "stored"
    return filled


def load_config_file(path: str | Path) -> dict[str, Any]:
    """A TOML, YAML or JSON config file as a dict (flat keys like the flags, with underscores)."""
    name = str(path)
    suffix = Path(path).suffix.lower()
    if suffix not in (".toml", ".yaml", ".yml", ".json"):
        raise InputError("use a .toml, .yaml or .json config file", name)
    text = read_text(path)
    try:
        if suffix == ".toml":
            data = tomllib.loads(text)
        elif suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text) or {}
    except ImportError:
        raise InputError("YAML config files need PyYAML (pip install pyyaml)", name) from None
    except (tomllib.TOMLDecodeError, ValueError, RecursionError) as exc:
        raise InputError(f"cannot parse: {exc}", name) from None
    except Exception as exc:  # yaml.YAMLError without importing yaml up front
        raise InputError(f"cannot parse: {exc}", name) from None
    if not isinstance(data, dict):
        raise InputError("expected a table of settings", name)
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def nested_settings(values: Mapping[str, Any], flat: Mapping[str, tuple[str, str]] = FLAT,
                    sections: tuple[str, ...] = _SECTIONS) -> dict[str, Any]:
    """Flat names onto the settings models (``flat``); tables of a model's fields are merged in."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key in sections and isinstance(value, dict):
            out.setdefault(key, {}).update({str(k).replace("-", "_"): v for k, v in value.items()})
        elif key in flat:
            section, field = flat[key]
            out.setdefault(section, {})[field] = value
        else:
            out[key] = value
    return out


# -- what a run and the proxy share ------------------------------------------------------------


def config_error(err: dict[str, Any], where: str) -> InputError:
    """The located error for the first problem pydantic found in a configuration (``where``: its name)."""
    if err["type"] == "extra_forbidden":
        return InputError(f"unknown setting {where!r}", "config")
    if err["type"] == "missing":
        return InputError("required (give it as a flag or in the config file)", where)
    cause = (err.get("ctx") or {}).get("error")
    message = str(cause) if cause is not None else err["msg"]
    shown = "" if where.endswith("api_key") or cause is not None else f" (got {repr(err.get('input'))[:100]})"
    return InputError(message + shown, where)


def known_scorer(kind: str) -> str:
    """Validator of a ``scorer`` field: a name of the scorer registry."""
    if kind not in SCORERS:
        raise ValueError(f"unknown scorer {kind!r}; choose from {', '.join(SCORERS)}")
    return kind


def server_urls(urls: list[str]) -> list[str]:
    """Validator of server URL fields: http(s), a valid port, no query (it could hold a key)."""
    if any(not u.strip() for u in urls):
        raise ValueError("a server URL is empty")
    for url in urls:
        try:
            check_url(url, "url")
        except InputError as exc:
            raise ValueError(exc.detail) from None
    return urls


def validated_scorer(kind: str, values: dict[str, Any]) -> BaseModel | None:
    """The scorer's settings model (its ``api_key`` cleaned by the :data:`~.types.ApiKey` type); errors
    name ``scorer_settings.<key>``."""
    try:
        settings = scorer_settings(kind, values)
    except InputError as exc:
        raise exc.renamed({"scorer.": "scorer_settings."}) from None
    if settings is not None:
        refuse_bool_numbers(type(settings), values, lambda loc: "scorer_settings." + ".".join(loc))
    return settings


def config_secrets(client: ClientSettings, scorer: BaseModel | None, urls: list[str]) -> list[str]:
    """Every key and URL credential of a configuration (to mask them in what is stored or shown)."""
    found: list[str] = []
    for holder in (client, scorer):
        key = getattr(holder, "api_key", None)
        if key is not None:
            found.append(key.get_secret_value())
    for url in [*urls, *(getattr(scorer, "base_url", None) or [])]:
        found.extend(url_secrets(url))
    return found


def _listed(values: dict[str, Any]) -> dict[str, Any]:
    """One server URL or stop string may be given without a list."""
    return {k: [v] if k in ("base_url", "stop") and isinstance(v, str) else v for k, v in values.items()}


def _place(loc: tuple[Any, ...]) -> str:
    """The name an error reports: the flat name where there is one, else ``section.key``."""
    parts = tuple(str(p) for p in loc)
    if len(parts) >= 2 and tuple(parts[:2]) in _FLAT_NAME:
        return _FLAT_NAME[tuple(parts[:2])]
    return ".".join(parts) or "config"


def setting_places(values: dict[str, Any]) -> set[str]:
    """The places errors name for the settings ``values`` gives (flat keys and tables, as in a file).

    Lets an application tell which source a bad value came from (``n_max`` in a config file
    versus the ``--n-max`` flag).
    """
    places: set[str] = set()
    for key, value in nested_settings(_listed(values)).items():
        places.add(key)
        if isinstance(value, dict) and key in _SECTIONS:
            places |= {_place((key, field)) for field in value}
        elif isinstance(value, dict):
            places |= {f"{key}.{field}" for field in value}
    return places


def build_config(file_values: dict[str, Any], flag_values: dict[str, Any]) -> RunConfig:
    """Flags over file values over the models' defaults, validated; errors name the setting.

    Flags that were not given are None (or empty). The policy and scorer settings are
    validated here too, so a bad value fails before any server is contacted.
    """
    given = {k: v for k, v in flag_values.items() if v is not None and v != [] and v != {}}
    values = nested_settings(_listed(file_values))
    for key, value in nested_settings(_listed(given)).items():
        if isinstance(values.get(key), dict) and isinstance(value, dict):
            values[key] = {**values[key], **value}
        else:
            values[key] = value
    refuse_bool_numbers(RunConfig, values, _place)
    try:
        config = RunConfig(**values)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise config_error(err, _place(err["loc"])) from None
    key = config.client.api_key
    check_credentials(config.base_url, key.get_secret_value() if key is not None else None, "api_key")
    config.template_obj()
    config.policy_config()
    config.scorer_config()
    return config


def build_generator(config: RunConfig) -> OpenAIGenerator:
    """The generator: the only client that gets ``client.api_key``."""
    client = config.client
    if "max_connections" not in client.model_fields_set:
        client = client.model_copy(update={"max_connections": max(config.sampler.concurrency, 8) * 2})
    return OpenAIGenerator(config.base_url, config.model, config.generation, kind=config.endpoint, client=client)


def build_run_scorer(config: RunConfig) -> Scorer:
    """The scorer; it may use the generator's servers and model, never the generator's key."""
    context = ScorerContext(base_urls=tuple(config.base_url), model=config.model,
                            client=config.client.model_copy(update={"api_key": None}))
    return build_scorer(config.scorer, config.scorer_config(), context)
