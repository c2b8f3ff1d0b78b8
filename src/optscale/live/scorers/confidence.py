"""Self-confidence: no second model, the generator's own token probabilities."""

from __future__ import annotations

import math
from collections.abc import Sequence

from .base import Score, ScoreRequest, clip

__all__ = ["ConfidenceScorer"]


class ConfidenceScorer:
    """Self-confidence: ``exp(mean token logprob)``, the geometric mean of token probabilities.

    Costs nothing beyond asking the generator for logprobs, which makes it the scorer for
    servers where a second model is not available.
    """

    kind = "confidence"
    needs_logprobs = True

    async def check(self) -> None:
        return None

    async def score(self, items: Sequence[ScoreRequest]) -> list[Score]:
        out = []
        for item in items:
            if not item.text.strip():
                out.append(Score(0.0, flag="empty"))
            elif not item.logprobs:
                out.append(Score(0.0, flag="no_logprobs"))
            else:
                out.append(Score(clip(math.exp(sum(item.logprobs) / len(item.logprobs)))))
        return out

    async def aclose(self) -> None:
        return None
