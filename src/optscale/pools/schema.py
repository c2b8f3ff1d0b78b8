"""The completion-pool format: one problem per JSON line, with its stored samples.

A pool is what offline replay and the fitted priors are computed from, so the models are
strict (no silent coercion of ``"0.5"`` to a number, no booleans as numbers) and mirror
``pool.schema.json`` exactly; a test keeps the two in agreement. Unknown keys are kept, so
pools can carry metadata such as ``subject`` or ``level`` through every tool. Optional
fields that are unknown (None) are left out when a pool is written: absent and null mean the
same thing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
)

from ..checks import N_MAX_LIMIT

__all__ = ["MAX_SAMPLES", "MAX_TOKENS", "PoolSample", "PoolProblem", "SCHEMA_PATH", "json_schema"]

SCHEMA_PATH = Path(__file__).with_name("pool.schema.json")


def _integral_float_to_int(value: Any) -> Any:
    """JSON has one number type, so ``3.0`` is a valid integer (as in JSON Schema)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


#: Largest token count a pool may hold: integers stay exact in float64 (and in JSON readers) up to here.
MAX_TOKENS = 2**53 - 1

#: Most samples one problem may hold: far above any real pool (hundreds), and a bound on what a small
#: compressed file can make the readers allocate (replay pads every problem to the widest).
MAX_SAMPLES = N_MAX_LIMIT  # one number: a pool holds what a policy may draw (optscale.checks)

Score = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
TokenCount = Annotated[int, BeforeValidator(_integral_float_to_int), Field(ge=0, le=MAX_TOKENS)]


def _drop_unknown(
    model: BaseModel, handler: SerializerFunctionWrapHandler, optional: tuple[str, ...]
) -> dict[str, Any]:
    data = handler(model)
    for key in optional:
        if key in data and data[key] is None:
            del data[key]
    return data


class PoolSample(BaseModel):
    """One stored response: its extracted answer (None when none), verifier score and cost.

    ``score`` is optional: answer-only pools (no verifier) hold none, and the policies that vote
    on answers (``sc``, ``esc``, ``asc``, ``bon`` with ``select=majority`` ...) run on them. A
    pool has a score on every sample or on none (:func:`optscale.pools.iter_pool` checks it).
    """

    model_config = ConfigDict(strict=True, extra="allow")

    answer: str | None
    score: Score | None = None
    tokens: TokenCount
    correct: bool | None = None
    text: str | None = None
    step_scores: list[Score] | None = None

    @model_serializer(mode="wrap")
    def _serialize(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return _drop_unknown(self, handler, ("score", "correct", "text", "step_scores"))


class PoolProblem(BaseModel):
    """One problem: its gold answer (None in traffic, which has none) and at least one sample."""

    model_config = ConfigDict(strict=True, extra="allow")

    id: Annotated[str, Field(min_length=1)]
    question: str | None = None
    answer: str | None = None
    samples: Annotated[list[PoolSample], Field(min_length=1, max_length=MAX_SAMPLES)]

    @model_serializer(mode="wrap")
    def _serialize(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return _drop_unknown(self, handler, ("question", "answer"))


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of one pool line, as shipped in ``pool.schema.json``."""
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
