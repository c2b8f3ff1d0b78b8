"""Self-confidence: no second model, the generator's own token probabilities."""

from __future__ import annotations

import math
from collections.abc import Sequence

from .base import Score, ScoreRequest

__all__ = ["ConfidenceScorer", "LOGPROB_TOLERANCE"]

#: Largest logprob accepted as float rounding of 0 (a probability of 1); anything above is invalid.
LOGPROB_TOLERANCE = 1e-6


class ConfidenceScorer:
    """Self-confidence: ``exp(mean token logprob)``, the geometric mean of token probabilities.

    Costs nothing beyond asking the generator for logprobs (``tokens`` 0), which makes it the
    scorer for servers where a second model is not available. A logprob that is not a finite
    number <= 0 is not a probability: the sample scores 0 with flag ``invalid_logprobs``
    rather than a confidence of 1 the server never meant.
    """

    kind = "confidence"
    needs_logprobs = True

    async def check(self) -> None:
        return None

    async def score(self, items: Sequence[ScoreRequest]) -> list[Score]:
        return [self._one(item) for item in items]

    @staticmethod
    def _one(item: ScoreRequest) -> Score:
        if not item.text.strip():
            return Score(0.0, flag="empty", tokens=0)
        if not item.logprobs:
            return Score(0.0, flag="no_logprobs", tokens=0)
        for i, logprob in enumerate(item.logprobs):
            if not math.isfinite(logprob) or logprob > LOGPROB_TOLERANCE:
                return Score(0.0, flag=f"invalid_logprobs: token {i} has logprob {logprob!r} (must be <= 0)",
                             tokens=0)
        mean = sum(item.logprobs) / len(item.logprobs)
        return Score(min(1.0, math.exp(mean)), tokens=0)

    async def aclose(self) -> None:
        return None
