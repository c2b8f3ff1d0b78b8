"""What a generation client is asked and what it answers: settings, prompts, completions, errors.

The settings are frozen pydantic models with a description on every field: the run
configuration is composed of them and the CLI's help is generated from the descriptions.
Keys (``api_key``) are secrets: they are never part of a dump, a repr or a run's identity.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr

from ..errors import OptscaleError

__all__ = [
    "ApiKey",
    "EndpointKind",
    "MAX_TOKENS_LIMIT",
    "clean_key",
    "GenerationSettings",
    "ClientSettings",
    "Prompt",
    "Completion",
    "TokenMeter",
    "GenerationError",
    "RequestRejected",
    "RequestFailed",
]

EndpointKind = Literal["chat", "completion"]

MAX_TOKENS_LIMIT = 2**24
"""Largest ``max_tokens`` of a request, far above any context window: a bigger one would also lift
the response-size cap derived from it (see :mod:`optscale.live.openai`) out of reach."""


def clean_key(key: str) -> str:
    """``key`` without surrounding whitespace (a key file's trailing newline is common).

    A key that still holds whitespace, a control or a non-ASCII character cannot go in an
    ``Authorization`` header: httpx would fail each request with an error quoting the header,
    key included. It is refused here with a ValueError whose message never shows the key.
    """
    key = key.strip()
    if any(not "!" <= c <= "~" for c in key):
        raise ValueError("contains a control character, whitespace or a non-ASCII character; a key is "
                         "printable ASCII")
    return key


#: An API key setting: stripped and checked by :func:`clean_key`, kept secret.
ApiKey = Annotated[SecretStr, AfterValidator(lambda key: SecretStr(clean_key(key.get_secret_value())))]


class GenerationError(OptscaleError):
    """A request that produced no usable completion."""


class RequestRejected(GenerationError):
    """The server refused the request itself (4xx other than 408/409/425/429): retrying cannot help.

    ``where`` names the setting to fix (``api_key``, ``model``, ``base_url``, or those of a
    scorer's server, ``scorer.api_key`` ...).
    """

    def __init__(self, message: str, status: int, where: str):
        self.status = status
        self.where = where
        self.detail = message
        super().__init__(f"{where}: {message}")


class RequestFailed(GenerationError):
    """Every attempt of a request failed with a transient error (after all retries).

    ``status`` is the HTTP status of the last attempt's answer (None when there was none: a
    timeout, a dropped connection), ``retry_after`` the seconds its ``Retry-After`` asked for.
    """

    def __init__(self, message: str, attempts: int, status: int | None = None, retry_after: float | None = None):
        self.attempts = attempts
        self.status = status
        self.retry_after = retry_after
        super().__init__(message)


class _Settings(BaseModel):
    # inf and nan are refused: neither is a usable temperature or timeout, nor valid JSON in a run folder.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class GenerationSettings(_Settings):
    """Sampling parameters sent with every request."""

    temperature: float = Field(0.7, ge=0, description="sampling temperature")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling: keep the smallest token set of this mass")
    max_tokens: int = Field(1024, ge=1, le=MAX_TOKENS_LIMIT, description="most tokens one response may have")
    stop: tuple[str, ...] = Field((), description="strings that end a response")
    logprobs: bool = Field(False, description="ask for the token logprobs of each response")
    top_logprobs: int = Field(0, ge=0, le=20, description="alternatives per token with their logprobs")
    stream: bool = Field(True, description="stream responses (needed to count the tokens of cancelled requests)")
    seed: int | None = Field(None, ge=0, lt=2**63,
                             description="sampling seed; each sample gets its own seed derived from it")


class ClientSettings(_Settings):
    """Transport behaviour: timeouts, retries, connections, the usage report request and the key.

    ``timeout`` bounds one whole attempt; ``idle_timeout`` bounds the silence between two
    received bytes, which is what catches a hung stream long before ``timeout``. ``api_key``
    goes only to this client's own servers and is never dumped (``exclude``) nor shown.
    """

    timeout: float = Field(600.0, gt=0, description="seconds one request attempt may take in all")
    idle_timeout: float = Field(60.0, gt=0, description="seconds without data before an attempt counts as hung")
    connect_timeout: float = Field(10.0, gt=0, description="seconds to open a connection")
    retries: int = Field(5, ge=0, le=100, description="retries of a request after transient failures")
    backoff: float = Field(0.5, ge=0, description="first retry delay in seconds (doubles, with jitter)")
    backoff_max: float = Field(20.0, ge=0, description="longest retry delay in seconds")
    stream_usage: bool = Field(True, description="ask streaming servers for a usage report (stream_options)")
    api_key: ApiKey | None = Field(None, exclude=True, description="bearer key sent to these servers only")
    max_connections: int = Field(64, ge=1, description="most open connections")


@dataclass(frozen=True)
class Prompt:
    """What one request asks: chat messages, or raw text for the completion endpoint."""

    messages: tuple[dict[str, str], ...] | None = None
    text: str | None = None


@dataclass
class TokenMeter:
    """Tokens the server produced for one logical request, readable even after cancellation.

    ``streamed`` counts the current attempt; ``wasted`` those of earlier attempts that
    failed mid-way (their tokens were generated and are paid for, but gave no sample).
    ``by_chunks`` is set once a token was counted from a content chunk rather than a logprob
    entry (servers may merge tokens into one chunk, so such counts can fall short).
    """

    streamed: int = 0
    wasted: int = 0
    by_chunks: bool = False

    @property
    def total(self) -> int:
        return self.streamed + self.wasted

    def attempt_failed(self) -> None:
        self.wasted += self.streamed
        self.streamed = 0


@dataclass
class Completion:
    """One generated choice and what it cost.

    ``tokens_source`` says where ``tokens`` came from: ``usage`` (the server's report),
    ``usage_split`` (one reported total for several choices, split evenly), ``logprobs`` (one
    per streamed logprob entry: exact), ``chunks`` (one per streamed content chunk, when the
    server sent neither usage nor logprobs: a lower bound if it merged tokens) or ``unknown``
    (no usable report and nothing streamed to count). ``usage_invalid`` says why a usage
    report was refused (negative, not an integer, more than the request allows), in which
    case the counted tokens are used. ``endpoint`` is the server URL without credentials.
    """

    text: str
    tokens: int
    tokens_source: str
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    logprobs: list[float] | None = None
    top_logprobs: list[dict[str, float]] | None = None
    endpoint: str = ""
    attempts: int = 1
    wasted_tokens: int = 0
    latency_s: float = 0.0
    usage_invalid: str | None = None
