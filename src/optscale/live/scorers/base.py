"""What every scorer shares: the protocol, requests and scores, step splitting and aggregation.

A response that cannot be scored (empty text, no steps, a reward of the wrong shape) gets
score 0 and a ``flag`` saying why, so one bad sample never stops a run; a scorer that cannot
work at all (no logprobs, wrong PRM configuration) fails its :meth:`Scorer.check` with an
:class:`~optscale.errors.InputError` naming the setting to change (``scorer``,
``scorer.<key>``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from ...errors import InputError, OptscaleError
from ..prompts import BOXED_INSTRUCTION

__all__ = [
    "Aggregate",
    "ScoreRequest",
    "Score",
    "Scorer",
    "ScoringError",
    "aggregate_steps",
    "split_steps",
    "reported_tokens",
    "share_tokens",
    "prm_conversation",
    "PRM_SYSTEM",
    "PrmStepSettings",
]

Aggregate = Literal["mean", "min", "last", "product"]


class ScoringError(OptscaleError):
    """A scorer broke its contract (for example fewer scores than responses): the run cannot trust it."""


@dataclass(frozen=True)
class ScoreRequest:
    """A response to score, with its question and (for the confidence scorer) its token logprobs."""

    question: str
    text: str
    logprobs: tuple[float, ...] | None = None


@dataclass(frozen=True)
class Score:
    """A score in [0, 1]; ``steps`` are the per-step scores of a PRM, ``flag`` why a score is degraded.

    ``tokens`` is what the scorer's own model spent on this score (prompt and completion tokens
    of its calls, as its server reported them): 0 when it called no model, None when the
    server did not say. A batch's reported total is shared out over its responses.
    """

    value: float
    steps: tuple[float, ...] | None = None
    flag: str | None = None
    tokens: int | None = None


class Scorer(Protocol):
    """Scores batches of responses."""

    kind: str
    needs_logprobs: bool

    async def check(self) -> None:
        """Fail fast (``InputError`` naming the setting) when the scorer cannot work at all."""

    async def score(self, items: Sequence[ScoreRequest]) -> list[Score]:
        """One score per item, in order."""

    async def aclose(self) -> None:
        """Release connections and models."""


def split_steps(text: str, separator: str = "\n\n") -> list[str]:
    """Reasoning steps of a response: its non-blank paragraphs (the Qwen PRM convention)."""
    return [part.strip() for part in text.split(separator) if part.strip()]


def aggregate_steps(steps: Sequence[float], how: Aggregate) -> float:
    """One response score from its step scores."""
    if not steps:
        raise ValueError("no step scores")
    if how == "mean":
        return float(sum(steps) / len(steps))
    if how == "min":
        return float(min(steps))
    if how == "last":
        return float(steps[-1])
    if how == "product":
        return float(math.prod(steps))
    raise InputError(f"unknown aggregate {how!r}; choose from mean, min, last, product", "scorer.aggregate")


def clip(value: float) -> float:
    return min(1.0, max(0.0, value))


def reported_tokens(value: Any) -> int | None:
    """A token count from a server's usage report, or None when it is absent or impossible."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**53:
        return value
    return None


def share_tokens(total: int | None, weights: Sequence[int]) -> list[int | None]:
    """``total`` split over items in proportion to ``weights`` (largest remainders), summing to it exactly.

    A batched request reports one total for all its inputs; this attributes it to each input
    by size, so that per-request sums stay honest where batches mix requests.
    """
    if total is None:
        return [None] * len(weights)
    whole = sum(weights)
    if whole <= 0:
        return [total // len(weights) + (i < total % len(weights)) for i in range(len(weights))] if weights else []
    exact = [total * w / whole for w in weights]
    out = [int(x) for x in exact]
    for i in sorted(range(len(weights)), key=lambda i: out[i] - exact[i])[:total - sum(out)]:
        out[i] += 1
    return out


def positive_probability(entry: Any) -> float:
    """The 'correct' probability of one step from a PRM output row.

    vLLM returns per-step class probabilities ``[p_wrong, p_right]`` (softmax applied) or a
    single value; raw logits are turned into probabilities here.
    """
    if isinstance(entry, (int, float)) and not isinstance(entry, bool):
        value = float(entry)
        return value if 0.0 <= value <= 1.0 else 1.0 / (1.0 + math.exp(-value))
    if isinstance(entry, list) and entry and all(isinstance(v, (int, float)) for v in entry):
        if len(entry) == 1:
            return positive_probability(entry[0])
        values = [float(v) for v in entry]
        if all(0.0 <= v <= 1.0 for v in values) and abs(sum(values) - 1.0) < 1e-3:
            return values[-1]
        top = max(values)
        weights = [math.exp(v - top) for v in values]
        return weights[-1] / sum(weights)
    raise ValueError(f"a step score must be a number or a list of class scores, got {str(entry)[:60]}")


PRM_SYSTEM = BOXED_INSTRUCTION


def prm_conversation(question: str, steps: Sequence[str], step_tag: str, system: str | None) -> list[dict[str, str]]:
    """The conversation a Qwen-style PRM reads: the steps joined and ended by the step tag."""
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [
        {"role": "user", "content": question},
        {"role": "assistant", "content": step_tag.join(steps) + step_tag},
    ]


class PrmStepSettings(BaseModel):
    """How a PRM reads a response: the settings the vLLM and the in-process PRM share."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    aggregate: Aggregate = Field("mean", description="how step scores become one score: mean, min, last or product")
    separator: str = Field("\n\n", min_length=1, description="text between two steps (backslash escapes allowed)")
    step_tag: str = Field("<extra_0>", min_length=1, description="the token that ends each step in the PRM's input")
    system: str | None = Field(PRM_SYSTEM, description="system prompt of the PRM's conversation")
    max_steps: int = Field(64, ge=1, le=10_000, description="steps scored at most; the rest is merged into the last")


class PrmBase:
    """Step splitting and score combination of the PRM scorers."""

    needs_logprobs = False

    def __init__(self, aggregate: Aggregate = "mean", separator: str = "\n\n", step_tag: str = "<extra_0>",
                 system: str | None = PRM_SYSTEM, max_steps: int = 64):
        aggregate_steps([1.0], aggregate)  # validates the name
        self.aggregate = aggregate
        self.separator = separator
        self.step_tag = step_tag
        self.system = system
        self.max_steps = max_steps

    def steps(self, text: str) -> list[str]:
        """Steps of a response; past ``max_steps`` the tail is merged into the last one."""
        steps = split_steps(text, self.separator)
        if len(steps) > self.max_steps:
            steps = steps[: self.max_steps - 1] + [self.separator.join(steps[self.max_steps - 1:])]
        return steps

    def combine(self, expected: int, raw: Any) -> Score:
        try:
            if not isinstance(raw, list):
                raise ValueError(f"expected a list of step scores, got {type(raw).__name__}")
            steps = tuple(clip(positive_probability(v)) for v in raw)
        except (ValueError, OverflowError) as exc:
            return Score(0.0, flag=f"prm_shape: {exc}")
        if len(steps) != expected:
            return Score(0.0, flag=f"prm_shape: expected {expected} step scores, got {len(steps)}")
        return Score(aggregate_steps(steps, self.aggregate), steps)
