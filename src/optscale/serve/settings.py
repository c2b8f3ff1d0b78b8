"""The server's configuration: one pydantic model, from a TOML/YAML/JSON file and flags (flags win).

Names are the flags' long names with underscores (``max_episodes``, ``n_max``); the
generation defaults and the upstream client's behaviour are the live engine's own models
(:class:`~optscale.live.types.GenerationSettings`, :class:`~optscale.live.types.ClientSettings`),
given flat (``temperature``, ``timeout``) or as tables (``[client] backoff = 1``). Errors name
the key (``max_episodes``, ``client.backoff``, ``policy_settings.alpha``,
``scorer_settings.model``); the CLI translates them to its flags.

Keys: the upstream key comes from ``api_key`` or ``OPTSCALE_UPSTREAM_API_KEY``, a scorer's
from its own setting or variable (``OPTSCALE_JUDGE_API_KEY``), the clients' keys from
``api_keys_file`` or ``OPTSCALE_SERVE_API_KEYS`` (comma-separated). None is ever dumped or logged.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..compose import build_policy
from ..errors import InputError
from ..live.config import (config_error, config_secrets, known_scorer, load_config_file, nested_settings,
                           refuse_bool_numbers, server_urls, validated_scorer)
from ..live.sampler import SamplerSettings
from ..live.types import ClientSettings, GenerationSettings, clean_key
from ..policies import POLICIES
from .. import defaults
from ..policies.common import N_MAX_LIMIT
from .stateurl import check_state_url

__all__ = ["ServeConfig", "build_serve_config", "check_writable_dir", "UPSTREAM_KEY_ENV", "CLIENT_KEYS_ENV", "FLAT"]

UPSTREAM_KEY_ENV = "OPTSCALE_UPSTREAM_API_KEY"
CLIENT_KEYS_ENV = "OPTSCALE_SERVE_API_KEYS"

#: Flat names -> (section, field) of the live engine's settings models.
FLAT: dict[str, tuple[str, str]] = {
    **{k: ("generation", k) for k in ("temperature", "top_p", "max_tokens", "stream")},
    **{k: ("client", k) for k in ("api_key", "timeout", "idle_timeout", "connect_timeout", "retries", "backoff",
                                  "backoff_max", "max_connections")},
}
_SECTIONS = ("generation", "client")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token: a header's name
_OWN_HEADERS = {"authorization", "content-type", "content-length", "host", "connection", "transfer-encoding",
                "accept", "accept-encoding", "user-agent"}
_FLAT_NAME = {place: name for name, place in FLAT.items()}


class ServeConfig(BaseModel):
    """Everything ``optscale serve`` needs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    upstream: list[str] = Field(min_length=1, description="OpenAI-compatible server(s) of the model, e.g. "
                                "http://127.0.0.1:8080/v1; several for replicas")
    model: str = Field(min_length=1, description="model name as the upstream serves it (and clients ask for it)")
    scorer: str = Field(description="how samples are scored")
    scorer_settings: dict[str, Any] = Field(default_factory=dict, description="settings of the scorer")
    policy: str = Field(defaults.POLICY, description="default policy of requests that name none")
    n_max: int = Field(defaults.SERVE_N_MAX, ge=1, le=N_MAX_LIMIT, description="default most samples per request")
    policy_settings: dict[str, Any] = Field(default_factory=dict,
                                            description="settings of the default policy (server side only)")
    host: str = Field("127.0.0.1", min_length=1, description="address to bind (127.0.0.1: this machine only)")
    port: int = Field(8000, ge=0, le=65535, description="port to listen on")
    api_keys_file: str | None = Field(None, description="file of client keys, one per line; without it (and "
                                      f"without {CLIENT_KEYS_ENV}) requests need no key")
    max_episodes: int = Field(1024, ge=1, le=100_000, description="episodes (requests sampling) at once, "
                              "their upstream requests queued under max_in_flight; more get 429")
    max_in_flight: int = Field(64, ge=1, le=100_000,
                               description="upstream requests under way at once, shared fairly by episodes")
    in_flight: int = Field(8, ge=1, le=100_000, description="upstream requests under way at once for one episode")
    max_failures: int = Field(3, ge=1, le=1000, description="failed upstream requests after which an episode "
                              "gives up")
    tables_dir: str | None = Field(None, description="directory of stopping tables (written by `optscale policy "
                                   "fit`) that a request may name with the learned policy's setting table: a file "
                                   "name in it, never a path; without it requests cannot set table")
    shadow_share: float = Field(0.0, ge=0.0, le=1.0, description="share of requests (0 to 1, chosen by a hash of "
                                "the request id) whose episode is sampled on to n_max in the background after "
                                "the client has its answer, at the lowest priority (shadow sampling)")
    shadow_in_flight: int = Field(4, ge=1, le=100_000, description="upstream requests of shadow sampling at once "
                                  "(within max_in_flight, only from spare capacity)")
    shadow_queue: int = Field(64, ge=1, le=100_000, description="shadow episodes waiting to run; beyond it the "
                              "oldest is dropped")
    traffic_dir: str | None = Field(None, description="directory where every shadow episode is appended as a pool "
                                    "line (rotating gzipped JSON Lines, no gold); none: not written")
    traffic_rotate_mb: float = Field(64.0, gt=0, description="size in MiB after which a traffic file is closed and "
                                     "gzipped")
    traffic_rotate_s: float = Field(3600.0, gt=0, description="age in seconds after which a traffic file is closed "
                                    "and gzipped (at its next record)")
    traffic_store_prompts: bool = Field(False, description="store the question and the samples' texts in traffic "
                                        "records (otherwise only a sha256 of the messages)")
    max_n_max: int = Field(64, ge=1, le=N_MAX_LIMIT, description="largest n_max a request may ask for")
    max_deadline_s: float = Field(600.0, gt=0, description="longest deadline_s a request may ask for (and the "
                                  "deadline of requests that give none)")
    max_total_tokens: int | None = Field(None, ge=1, description="most tokens one episode may generate (requests "
                                         "may ask for less)")
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="largest request body")
    idempotency_ttl_s: float = Field(600.0, ge=0, description="how long a result is kept for retries with the "
                                     "same Idempotency-Key (0: off)")
    idempotency_max_entries: int = Field(10_000, ge=1, description="results kept for Idempotency-Key retries")
    idempotency_max_bytes: int = Field(256 * 1024 * 1024, ge=1024, description="bytes of results kept for "
                                       "Idempotency-Key retries (oldest dropped first)")
    body_timeout_s: float = Field(30.0, gt=0, description="seconds a client may take to send its request body "
                                  "(408 and the connection closed after)")
    max_body_reads: int = Field(1024, ge=1, le=100_000, description="request bodies read at once; one more gets "
                                "429")
    max_body_buffer_bytes: int = Field(256 * 1024 * 1024, ge=1024, description="bytes of request bodies held at "
                                       "once (being read, or by their request under way); a body that would pass "
                                       "it gets 429")
    header_timeout_s: float = Field(10.0, gt=0, description="seconds a client may take to send its request line "
                                    "and headers (408 and the connection closed after)")
    drain_s: float = Field(30.0, ge=0, description="seconds the requests under way get to finish on SIGTERM/SIGINT "
                           "(new ones get 503); then they are answered 503 (a stream: an error event)")
    limit_concurrency: int = Field(1024, ge=1, le=1_000_000, description="connections and requests under way at "
                                   "once; uvicorn answers 503 beyond")
    keep_alive_s: int = Field(5, ge=1, le=3600, description="seconds an idle keep-alive connection is kept open")
    max_header_bytes: int = Field(16 * 1024, ge=1024, le=1024 * 1024, description="largest request line and "
                                  "headers (h11's limit; the connection is refused beyond)")
    keepalive_s: float = Field(5.0, gt=0, description="seconds between SSE keep-alive comments while sampling")
    retry_after_s: int = Field(1, ge=0, description="Retry-After of 429 and 503 answers")
    ready_ttl_s: float = Field(10.0, ge=0, description="seconds a successful readiness check is trusted")
    answer_style: Literal["auto", "boxed", "number"] = Field("auto", description="how final answers are read")
    zero_unanswered: bool = Field(True, description="score 0 for a response without a final answer")
    log_format: Literal["text", "json"] = Field("text", description="request log lines: text or json")
    state: str | None = Field(None, description="Redis URL (redis://HOST:PORT/DB) of the state that replicas behind "
                              "a load balancer share (Idempotency-Key answers, table reloads, savings); without it "
                              "each process keeps its own")
    upstream_session_header: str | None = Field(None, description="header that every upstream request of an "
                                                "episode carries with the episode's request id, so that a router "
                                                "with session affinity keeps the episode on one engine")
    generation: GenerationSettings = GenerationSettings()
    client: ClientSettings = ClientSettings(retries=2, timeout=300.0)

    _known_scorer = field_validator("scorer")(lambda kind: known_scorer(kind))
    _urls = field_validator("upstream")(lambda urls: server_urls(urls))

    @field_validator("upstream_session_header")
    @classmethod
    def _header_name(cls, name: str | None) -> str | None:
        if name is not None and not _TOKEN.fullmatch(name):
            raise ValueError(f"{name!r} is not an HTTP header name (letters, digits and !#$%&'*+-.^_`|~)")
        if name is not None and name.lower() in _OWN_HEADERS:
            raise ValueError(f"{name} is a header the upstream client sets itself; choose another name")
        return name

    @field_validator("policy")
    @classmethod
    def _known_policy(cls, name: str) -> str:
        if name not in POLICIES:
            raise ValueError(f"unknown policy {name!r}; choose from {', '.join(POLICIES)}")
        return name

    def sampler_settings(self) -> SamplerSettings:
        return SamplerSettings(concurrency=self.max_in_flight, in_flight=self.in_flight, n_per_request=1,
                               max_failures=self.max_failures, answer_style=self.answer_style,
                               zero_unanswered=self.zero_unanswered)

    def uvicorn_options(self) -> dict[str, Any]:
        """The HTTP server's own limits: connections at once, idle keep-alive, header size and deadline."""
        from .server import http_protocol  # uvicorn, only once a server is built

        return {"limit_concurrency": self.limit_concurrency, "timeout_keep_alive": self.keep_alive_s,
                "h11_max_incomplete_event_size": self.max_header_bytes,
                "http": http_protocol(self.header_timeout_s)}

    def scorer_config(self) -> BaseModel | None:
        return validated_scorer(self.scorer, self.scorer_settings)

    def secrets(self) -> list[str]:
        """Every upstream key and URL credential (to mask them in anything shown)."""
        return config_secrets(self.client, self.scorer_config(), self.upstream)


def check_writable_dir(path: str, where: str) -> None:
    """Create ``path`` if needed and write a probe file in it; an :class:`InputError` at ``where`` when that fails."""
    try:
        os.makedirs(path, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".optscale-probe-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise InputError(f"{path!r} is not a writable directory ({exc.strerror or exc})", where) from None


def _nested(values: Mapping[str, Any]) -> dict[str, Any]:
    out = nested_settings(values, FLAT, _SECTIONS)
    if isinstance(out.get("upstream"), str):
        out["upstream"] = [out["upstream"]]
    return out


def _where(parts: tuple[str, ...]) -> str:
    """The name an error reports: the flat name where there is one (``max_tokens``), else ``section.key``."""
    return _FLAT_NAME.get(parts[:2], ".".join(parts)) if len(parts) >= 2 else ".".join(parts) or "config"


def build_serve_config(file_values: Mapping[str, Any] | None = None, flag_values: Mapping[str, Any] | None = None,
                       *, config_file: str | None = None, env: Mapping[str, str] | None = None) -> ServeConfig:
    """Flags over file values (``config_file`` or ``file_values``) over the defaults, validated.

    Flags not given are None or empty. The default policy and its settings and the scorer's
    settings are validated here, so a typo fails before the server starts.
    """
    env = os.environ if env is None else env
    values = _nested(load_config_file(config_file) if config_file else dict(file_values or {}))
    given = {k: v for k, v in (flag_values or {}).items() if v is not None and v != [] and v != {}}
    for key, value in _nested(given).items():
        if isinstance(values.get(key), dict) and isinstance(value, dict):
            values[key] = {**values[key], **value}
        else:
            values[key] = value
    client = values.setdefault("client", {})
    if client.get("api_key") is None and env.get(UPSTREAM_KEY_ENV):
        try:
            client["api_key"] = clean_key(env[UPSTREAM_KEY_ENV])
        except ValueError as exc:
            raise InputError(str(exc), UPSTREAM_KEY_ENV) from None
    # the server's own client defaults (fewer retries than a batch run: a client is waiting)
    values["client"] = {**ServeConfig.model_fields["client"].default.model_dump(), **client}
    refuse_bool_numbers(ServeConfig, values, _where)
    try:
        config = ServeConfig(**values)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise config_error(err, _where(tuple(str(p) for p in err["loc"]))) from None
    try:
        refuse_bool_numbers(POLICIES.get(config.policy), config.policy_settings,
                            lambda loc: "settings." + ".".join(loc))
        build_policy(config.policy, config.n_max, config.policy_settings, default_priors=False)
    except InputError as exc:
        raise exc.renamed({"settings": "policy_settings", "settings.": "policy_settings."}) from None
    if config.max_body_buffer_bytes < config.max_body_bytes:
        raise InputError(f"must be at least max_body_bytes ({config.max_body_bytes})", "max_body_buffer_bytes")
    if config.n_max > config.max_n_max:
        raise InputError(f"must not exceed max_n_max ({config.max_n_max})", "n_max")
    if config.state is not None:  # its form now; whether Redis answers there, when the server starts
        check_state_url(config.state, "state")
    if config.tables_dir is not None and not os.path.isdir(config.tables_dir):
        raise InputError(f"{config.tables_dir!r} is not a directory", "tables_dir")
    if config.traffic_dir is not None:
        check_writable_dir(config.traffic_dir, "traffic_dir")
    config.scorer_config()
    return config
