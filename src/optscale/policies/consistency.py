"""Answer-agreement baselines: early-stopping and adaptive self-consistency.

* ``esc`` (Li et al., 2024): sample in windows of ``window``; stop after the first window
  whose answers are all the same (and present).
* ``asc`` (Aggarwal et al., 2023): after each sample, stop once the leading answer beats the
  runner-up with posterior probability ``threshold`` under the Beta stopping rule
  ``P(p1 > p2) = P(X > 1/2), X ~ Beta(v1 + 1, v2 + 1)``.

Both return the majority answer; "no answer" never counts as a vote. Neither reads scores, so
both run on answer-only pools (unless ``select`` is set to a score-based rule).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from pydantic import Field
from scipy import special

from .common import PolicyBase
from .registry import register_policy
from .episode import Step
from .selection import Selection


@register_policy
class EarlyStoppingSC(PolicyBase):
    """Early-stopping self-consistency: stop after the first window of agreeing answers."""

    name: ClassVar[str] = "esc"
    label: ClassVar[str] = "Early-stopping SC (ESC)"  # row name in report tables
    needs_scores: ClassVar[bool] = False
    select: Selection = Selection.MAJORITY
    window: int = Field(5, ge=1, description="samples per window")

    def initial_plan(self) -> int:
        return min(self.window, self.n_max)

    def decide(self, episode) -> Step:
        n, w = episode.n, self.window
        if n % w == 0:
            last = episode.codes[n - w:]
            if last[0] >= 0 and all(c == last[0] for c in last):
                return Step(True, n, "window_agrees")
        return Step(False, min(self.n_max, (n // w + 1) * w))

    def replay_stops(self, batch):
        code = batch.flat("answer")
        w = self.window
        n_used = np.full(code.shape[0], self.n_max)
        decided = np.zeros(code.shape[0], dtype=bool)
        for end in range(w, min(self.n_max, code.shape[1]) + 1, w):
            block = code[:, end - w:end]
            agree = (block[:, :1] >= 0) & (block == block[:, :1]).all(axis=1, keepdims=True)
            stop = agree[:, 0] & ~decided & (batch.flat_available() >= end)
            n_used = np.where(stop, end, n_used)
            decided |= stop
        return n_used, {}


def beta_stop_probability(v1, v2) -> np.ndarray:
    """``P(X > 1/2)`` for ``X ~ Beta(v1 + 1, v2 + 1)``: the chance the leader is truly ahead."""
    return special.betainc(np.asarray(v2, float) + 1.0, np.asarray(v1, float) + 1.0, 0.5)


@register_policy
class AdaptiveSC(PolicyBase):
    """Adaptive self-consistency: stop once the leading answer wins with posterior probability ``threshold``."""

    name: ClassVar[str] = "asc"
    label: ClassVar[str] = "Adaptive SC (ASC)"  # row name in report tables
    needs_scores: ClassVar[bool] = False
    select: Selection = Selection.MAJORITY
    threshold: float = Field(0.95, gt=0.5, lt=1, description="posterior confidence needed to stop")

    def initial_plan(self) -> int:
        return 1

    def decide(self, episode) -> Step:
        counts = np.bincount([c for c in episode.codes if c >= 0], minlength=2)
        top = np.sort(counts)[::-1]
        if beta_stop_probability(top[0], top[1]) >= self.threshold:
            return Step(True, episode.n, "confident")
        return Step(False, episode.n + 1)

    def replay_stops(self, batch, chunk: int = 2048):
        code = batch.flat("answer")
        rows, width = code.shape
        width = min(width, self.n_max)
        k = max(int(code.max()) + 1, 2)
        available = batch.flat_available()
        n_used = np.full(rows, self.n_max)
        for lo in range(0, rows, chunk):
            c = code[lo:lo + chunk, :width]
            onehot = (c[:, :, None] == np.arange(k)[None, None, :]).astype(np.int16)
            tally = np.cumsum(onehot, axis=1)
            top2 = -np.partition(-tally, 1, axis=2)[:, :, :2]
            stop = beta_stop_probability(top2[:, :, 0], top2[:, :, 1]) >= self.threshold
            stop &= np.arange(1, width + 1)[None, :] <= available[lo:lo + chunk, None]
            first = np.where(stop.any(axis=1), stop.argmax(axis=1) + 1, self.n_max)
            n_used[lo:lo + chunk] = first
        return n_used, {}
