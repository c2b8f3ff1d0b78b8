"""The OpenAI request shapes the proxy speaks: chat and text completions, validated strictly.

A field the proxy cannot honour (``tools``, ``logprobs``, ``echo`` ...) is refused with 400
naming it, never ignored; numbers are numbers (``"n": true`` is refused, not read as 1). Where a
request's policy and settings come from is :mod:`optscale.serve.options` (its names are
re-exported here for the code that imported them from this module).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, StrictBool, ValidationError, field_validator

from ..live.types import MAX_TOKENS_LIMIT, GenerationSettings, Prompt
from .errors import ApiError
from .options import (HEADER_POLICY, HEADER_SETTINGS, OPTION_KEYS, REQUEST_OPTIONS_SCHEMA, SERVER_ONLY, Options,
                      located, resolve_options, table_file, table_names)

__all__ = ["ChatRequest", "CompletionRequest", "Message", "parse_request", "NEUTRAL",
           # re-exported from .options
           "Options", "resolve_options", "OPTION_KEYS", "HEADER_POLICY", "HEADER_SETTINGS", "SERVER_ONLY",
           "REQUEST_OPTIONS_SCHEMA", "located", "table_file", "table_names"]


#: Numbers as JSON has them: a boolean or a string is refused, never read as 1 or parsed.
Number = Annotated[float, Strict()]
Integer = Annotated[int, Strict()]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Message(BaseModel):
    """One chat message; fields other than role, content and name (e.g. ``tool_calls``) are kept, not sent."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | None = None
    name: str | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _text_only(cls, content: Any) -> Any:
        """Content parts are joined when all are text; images, audio and files are refused."""
        if isinstance(content, list):
            parts = []
            for i, part in enumerate(content):
                if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise ValueError(f"part {i}: only text parts ({{'type': 'text', 'text': ...}}) are supported")
                parts.append(part["text"])
            return "".join(parts)
        return content

    def text(self) -> str:
        return self.content or ""


class StreamOptions(_Strict):
    include_usage: StrictBool = False


class _Sampling(_Strict):
    model: str = Field(min_length=1)
    temperature: Number | None = Field(None, ge=0, le=2)
    top_p: Number | None = Field(None, gt=0, le=1)
    max_tokens: Integer | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT)  # also bounds the response-size cap
    n: Integer = Field(1, ge=1, le=128)
    stop: str | list[str] | None = None
    seed: Integer | None = Field(None, ge=0, lt=2**63)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, max_length=256, description="accepted for compatibility; not forwarded")
    optscale: dict[str, Any] | None = None

    def generation(self, base: GenerationSettings) -> GenerationSettings:
        stop = [self.stop] if isinstance(self.stop, str) else self.stop
        update = {"temperature": self.temperature, "top_p": self.top_p, "max_tokens": self.limit(),
                  "stop": tuple(stop) if stop is not None else None, "seed": self.seed}
        return base.model_copy(update={k: v for k, v in update.items() if v is not None})

    def limit(self) -> int | None:
        return self.max_tokens


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1, max_length=10_000)
    max_completion_tokens: Integer | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT)

    def limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def prompt(self) -> Prompt:
        messages = tuple({"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                         for m in self.messages)
        return Prompt(messages=messages)

    def _question_index(self) -> int:
        users = [i for i, m in enumerate(self.messages) if m.role == "user"]
        return users[-1] if users else len(self.messages) - 1

    def question(self) -> str:
        """What the scorer reads as the problem: the last user message."""
        return self.messages[self._question_index()].text()

    def question_place(self) -> str:
        return f"messages[{self._question_index()}].content"


class CompletionRequest(_Sampling):
    prompt: str | list[str] = Field(min_length=1)

    def text(self) -> str:
        if isinstance(self.prompt, list):
            if len(self.prompt) != 1:
                raise ApiError(400, "prompt: one prompt per request (an episode samples one prompt)", "prompt",
                               "invalid_request")
            return self.prompt[0]
        return self.prompt

    def prompt_obj(self) -> Prompt:
        return Prompt(text=self.text())

    def question(self) -> str:
        return self.text()

    def question_place(self) -> str:
        return "prompt"


def _zero(value: Any) -> bool:
    return type(value) in (int, float) and value == 0


#: OpenAI fields accepted with their default (no-op) value and then ignored; any other value is refused.
NEUTRAL: dict[str, tuple[str, Any]] = {
    "presence_penalty": ("0", _zero),
    "frequency_penalty": ("0", _zero),
    "logprobs": ("false", lambda v: v is False),
    "top_logprobs": ("0", lambda v: type(v) is int and v == 0),
    "logit_bias": ("{}", lambda v: v == {}),
    "response_format": ('{"type": "text"}', lambda v: v == {"type": "text"}),
    "store": ("false", lambda v: v is False),
    "metadata": ("{}", lambda v: v == {}),
    "parallel_tool_calls": ("true or false (there are no tools)", lambda v: isinstance(v, bool)),
}


def parse_request(kind: str, body: Any) -> ChatRequest | CompletionRequest:
    if not isinstance(body, dict):
        raise ApiError(400, f"the body must be a JSON object, got {type(body).__name__}", None, "invalid_request")
    body = dict(body)
    for key, (shown, neutral) in NEUTRAL.items():
        if key in body:
            value = body.pop(key)
            if value is not None and not neutral(value):
                raise ApiError(400, f"{key}: not supported except with its default {shown} (got "
                               f"{json.dumps(value, default=str)[:100]})", key, "unsupported_field")
    try:
        request = (ChatRequest if kind == "chat" else CompletionRequest).model_validate(body)
    except ValidationError as exc:
        raise located(exc) from None
    if kind == "completion":
        request.text()
    return request

