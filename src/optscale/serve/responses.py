"""An episode's result as OpenAI responses: ChatCompletion, Completion, and their SSE streams.

``choices[0]`` is the sample the policy selected (with its own ``finish_reason``); ``n > 1``
adds the next best-scored samples with *other* answers (fewer when the episode found fewer
distinct answers). ``usage`` counts every upstream generation of the episode, the partial
tokens of cancelled ones included, and the prompt once per upstream attempt. The
``optscale`` object says what the policy did. JSON has no NaN or infinity: a number that is not
finite (an estimate a degenerate fit produced) goes out as ``null`` (:func:`json_safe`), never as
the invalid ``NaN`` a client's parser would reject with the whole reply.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from .episodes import EpisodeResult, estimates, plain

__all__ = ["optscale_object", "chat_completion", "text_completion", "chat_stream", "text_stream", "sse", "json_safe"]

CHUNK_CHARS = 64


def json_safe(value: Any) -> Any:
    """``value`` as JSON can carry it: numpy scalars as Python values, NaN and infinities as None."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    value = plain(value)
    return None if isinstance(value, float) and not math.isfinite(value) else value


def optscale_object(result: EpisodeResult) -> dict[str, Any]:
    o, est = result.outcome, estimates(result.outcome)
    out = {
        "policy": result.options.name,
        "settings": result.options.settings,
        "n_used": len(result.samples),
        "n_launched": result.n_launched,
        "n_cancelled": sum(1 for e in result.events if e["type"] == "cancelled"),
        "n_failed": sum(1 for e in result.events if e["type"] == "failed"),
        "n_star": est.get("n_star"),
        "stop_reason": result.stop_reason,
        "estimates": est,
        "chosen_index": o.chosen,
        "chosen_score": result.samples[result.chosen]["score"],
        "usage_breakdown": result.breakdown(),
        "usage_unknown": result.usage_unknown(),
        "timings": result.timings,
    }
    if result.options.return_samples:
        out["samples"] = [_sample(s, "used") for s in result.samples] + [
            {"index": e["index"], "status": e["type"], "tokens": int(e["tokens"]), "score": None, "answer": None}
            for e in result.events]
    return out


def _sample(s: dict[str, Any], status: str) -> dict[str, Any]:
    return {"index": s["index"], "status": status, "score": s["score"], "answer": s["answer"],
            "tokens": int(s["tokens"]), "finish_reason": s["finish_reason"], "flag": s["flag"],
            "text": s["text"]}


def _split(text: str) -> tuple[str | None, str]:
    """``<think>reasoning</think>answer`` (how the engine keeps a reasoning model's two parts) apart again."""
    if text.startswith("<think>") and "</think>" in text:
        reasoning, _, content = text[len("<think>"):].partition("</think>")
        return reasoning, content
    return None, text


def _message(text: str) -> dict[str, Any]:
    reasoning, content = _split(text)
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if reasoning is not None:
        message["reasoning_content"] = reasoning
    return message


def chat_completion(result: EpisodeResult, rid: str, created: int, model: str, n: int) -> dict[str, Any]:
    choices = [{"index": k, "message": _message(result.samples[i]["text"]), "logprobs": None,
                "finish_reason": result.samples[i]["finish_reason"] or "stop"}
               for k, i in enumerate(result.ranked(n))]
    return json_safe({"id": f"chatcmpl-{rid}", "object": "chat.completion", "created": created, "model": model,
                      "choices": choices, "usage": result.usage(), "system_fingerprint": None,
                      "optscale": optscale_object(result)})


def text_completion(result: EpisodeResult, rid: str, created: int, model: str, n: int) -> dict[str, Any]:
    choices = [{"index": k, "text": result.samples[i]["text"], "logprobs": None,
                "finish_reason": result.samples[i]["finish_reason"] or "stop"}
               for k, i in enumerate(result.ranked(n))]
    return json_safe({"id": f"cmpl-{rid}", "object": "text_completion", "created": created, "model": model,
                      "choices": choices, "usage": result.usage(), "optscale": optscale_object(result)})


def sse(data: Any) -> str:
    """One server-sent event carrying ``data`` as JSON (non-finite numbers as null)."""
    return f"data: {json.dumps(json_safe(data), separators=(',', ':'), allow_nan=False)}\n\n"


def _pieces(text: str) -> list[str]:
    return [text[i:i + CHUNK_CHARS] for i in range(0, len(text), CHUNK_CHARS)] or [""]


def chat_stream(result: EpisodeResult, rid: str, created: int, model: str, n: int, include_usage: bool) -> list[str]:
    head = {"id": f"chatcmpl-{rid}", "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": None}
    events = []
    ranked = result.ranked(n)
    for k, i in enumerate(ranked):
        reasoning, content = _split(result.samples[i]["text"])
        events.append(sse({**head, "choices": [{"index": k, "delta": {"role": "assistant", "content": ""},
                                                 "logprobs": None, "finish_reason": None}]}))
        if reasoning:
            events += [sse({**head, "choices": [{"index": k, "delta": {"reasoning_content": p}, "logprobs": None,
                                                  "finish_reason": None}]}) for p in _pieces(reasoning)]
        events += [sse({**head, "choices": [{"index": k, "delta": {"content": p}, "logprobs": None,
                                              "finish_reason": None}]}) for p in _pieces(content)]
        last = {"index": k, "delta": {}, "logprobs": None,
                "finish_reason": result.samples[i]["finish_reason"] or "stop"}
        extra = {"optscale": optscale_object(result)} if k == len(ranked) - 1 else {}
        events.append(sse({**head, "choices": [last], **extra}))
    if include_usage:
        events.append(sse({**head, "choices": [], "usage": result.usage()}))
    return events + ["data: [DONE]\n\n"]


def text_stream(result: EpisodeResult, rid: str, created: int, model: str, n: int, include_usage: bool) -> list[str]:
    head = {"id": f"cmpl-{rid}", "object": "text_completion", "created": created, "model": model}
    events = []
    ranked = result.ranked(n)
    for k, i in enumerate(ranked):
        events += [sse({**head, "choices": [{"index": k, "text": p, "logprobs": None, "finish_reason": None}]})
                   for p in _pieces(result.samples[i]["text"])]
        last = {"index": k, "text": "", "logprobs": None, "finish_reason": result.samples[i]["finish_reason"] or "stop"}
        extra = {"optscale": optscale_object(result)} if k == len(ranked) - 1 else {}
        events.append(sse({**head, "choices": [last], **extra}))
    if include_usage:
        events.append(sse({**head, "choices": [], "usage": result.usage()}))
    return events + ["data: [DONE]\n\n"]
