"""Score-threshold rules: stop on the first good sample, or on ``k`` good samples that agree.

* ``firstpass``: stop at the first sample whose score reaches ``t``,
  ``N = min{n : s_n >= t}`` (``n_max`` when none does). Source: rejection sampling against a
  verifier threshold (von Neumann, 1951: draw until a sample is accepted), the baseline named in
  optscale issue 10; ``t`` plays the role of OptScale's ``s_min`` (Wang et al., OptScale), and
  ``Pr(best of N >= s_min)``, OptScale's target, is ``Pr(firstpass stops by N)``.
* ``agree``: stop when ``k`` samples with the same (present) answer all score at least ``t``,
  ``N = min{n : max_a #{i <= n : a_i = a, s_i >= t} >= k}``. Source: optscale issue 10's
  prototype ("two agreeing answers above t"), which beat the fixed-N curve on simulated pools;
  it gates self-consistency's answer agreement (Wang et al., 2023, arXiv 2203.11171; ESC's
  "stop once the answers agree", Li et al., 2024, arXiv 2401.10480) with the verifier score.
  "No answer" never agrees.

Both return the sample chosen by ``select`` among those drawn.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from pydantic import Field

from .. import defaults
from .common import PolicyBase
from .registry import register_policy
from .episode import Step
from .selection import Selection

__all__ = ["AgreeThreshold", "FirstPass"]


@register_policy
class FirstPass(PolicyBase):
    """First pass: stop at the first sample scoring at least ``t``."""

    name: ClassVar[str] = "firstpass"
    label: ClassVar[str] = "First pass (threshold)"  # row name in report tables
    t: float = Field(defaults.S_MIN, ge=0, le=1, description="score that ends the search (the default is optscale's s_min)")

    def initial_plan(self) -> int:
        return 1

    def decide(self, episode) -> Step:
        if episode.scores[-1] >= self.t:
            return Step(True, episode.n, "threshold")
        return Step(False, episode.n + 1)

    def replay_stops(self, batch):
        score = batch.flat("score")[:, : self.n_max]
        hit = (score >= self.t) & (np.arange(score.shape[1])[None, :] < batch.flat_available()[:, None])
        return np.where(hit.any(axis=1), hit.argmax(axis=1) + 1, self.n_max), {}


def agreeing_high(score: np.ndarray, code: np.ndarray, t: float, chunk: int = 1024) -> np.ndarray:
    """For each position ``j`` of each row: how many samples ``i <= j`` share ``j``'s answer and
    score ``>= t`` (0 where sample ``j`` itself has no answer or scores below ``t``)."""
    high = (score >= t) & (code >= 0)
    rows, width = code.shape
    out = np.zeros((rows, width), dtype=np.int64)
    upto = np.tri(width, dtype=bool)  # upto[j, i]: i <= j
    for lo in range(0, rows, chunk):
        c, h = code[lo:lo + chunk], high[lo:lo + chunk]
        same = (c[:, :, None] == c[:, None, :]) & h[:, None, :] & upto[None]
        out[lo:lo + chunk] = np.where(h, same.sum(axis=2), 0)
    return out


@register_policy
class AgreeThreshold(PolicyBase):
    """Agreement: stop when ``k`` samples with the same answer all score at least ``t``."""

    name: ClassVar[str] = "agree"
    label: ClassVar[str] = "Agreement threshold"  # row name in report tables
    select: Selection = Field(Selection.WEIGHTED, description="how the returned sample is chosen: best, majority or "
                                                             "weighted (default: the agreed answer carries the most "
                                                             "score)")
    t: float = Field(0.9, ge=0, le=1, description="score each agreeing sample must reach")
    k: int = Field(2, ge=2, le=1000, description="number of high-scoring samples that must share an answer")

    def initial_plan(self) -> int:
        return min(self.k, self.n_max)

    def decide(self, episode) -> Step:
        last, score = episode.codes[-1], episode.scores[-1]
        if last >= 0 and score >= self.t:
            agreeing = sum(1 for c, s in zip(episode.codes, episode.scores) if c == last and s >= self.t)
            if agreeing >= self.k:
                return Step(True, episode.n, "agree")
        return Step(False, episode.n + 1)

    def replay_stops(self, batch):
        width = min(batch.shape[2], self.n_max)
        count = agreeing_high(batch.flat("score")[:, :width], batch.flat("answer")[:, :width], self.t)
        hit = (count >= self.k) & (np.arange(width)[None, :] < batch.flat_available()[:, None])
        return np.where(hit.any(axis=1), hit.argmax(axis=1) + 1, self.n_max), {}
