"""DeepConf's consensus stopping: a confidence-weighted vote that stops once it is decisive.

Source: Fu, Wang, Tian and Zhao, "Deep Think with Confidence" (arXiv 2508.15260), online
mode, adaptive sampling. Each trace votes for its answer with its confidence ``c_i``; after a
warm-up of ``N_init`` traces, sampling stops as soon as the leading answer holds a share

    beta_n = max_a V_n(a) / sum_a V_n(a) >= tau,     V_n(a) = sum_{i <= n, a_i = a} c_i,

and the answer is the confidence-weighted vote. The paper's defaults are ``tau = 0.95`` and a
warm-up of ``N_init = 16`` traces; they are ours (``warmup = 16``: with ``n_max <= 16`` the rule
is the plain weighted vote over ``n_max`` samples). Here the confidence is the sample's score,
meant to come from the ``confidence`` scorer (``exp`` of the mean token log-probability; the
paper uses the negative mean log-probability of the top tokens, a monotone relative of it).
DeepConf's other half, stopping single low-confidence traces while they are generated, happens
inside one generation and is not a stopping rule over samples. "No answer" never votes: it is
in neither sum; a share with no vote (or only zero-confidence votes) never stops the search.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from pydantic import Field

from .common import PolicyBase
from .registry import register_policy
from .episode import Step
from .selection import Selection

__all__ = ["DeepConf", "leading_share"]


#: Largest (rows x width x distinct answers) tally one block of :func:`leading_share` builds.
CELLS = 2**24


def leading_share(score: np.ndarray, code: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """``beta`` after every prefix of each row: the leading answer's share of the summed
    confidence of the answered samples so far (0 while nothing has voted). Rows are taken
    ``chunk`` at a time, fewer where many distinct answers would make the tally exceed
    :data:`CELLS` cells (each row's value does not depend on the blocks)."""
    rows, width = code.shape
    out = np.zeros((rows, width))
    k = int(code.max()) + 1 if code.size else 0
    if k == 0:
        return out
    step = max(1, min(chunk, CELLS // (width * k)))
    for lo in range(0, rows, step):
        c, s = code[lo:lo + step], score[lo:lo + step]
        weight = np.where(c >= 0, s, 0.0)
        tally = np.cumsum((c[:, :, None] == np.arange(k)[None, None, :]) * weight[:, :, None], axis=1)
        total = np.cumsum(weight, axis=1)
        lead = tally.max(axis=2)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[lo:lo + step] = np.where(total > 0, lead / np.where(total > 0, total, 1.0), 0.0)
    return out


@register_policy
class DeepConf(PolicyBase):
    """DeepConf consensus: confidence-weighted vote, stop once the leader's weighted share reaches ``tau``."""

    name: ClassVar[str] = "deepconf"
    label: ClassVar[str] = "DeepConf"  # row name in report tables
    select: Selection = Field(Selection.WEIGHTED, description="how the returned sample is chosen (DeepConf: "
                                                             "weighted, the confidence-weighted vote)")
    tau: float = Field(0.95, gt=0, le=1, description="weighted share of the leading answer that stops sampling "
                                                     "(DeepConf's consensus threshold, 0.95)")
    warmup: int = Field(16, ge=1, le=1_000_000, description="samples always drawn before the share is checked "
                                                           "(DeepConf's N_init, 16)")

    def initial_plan(self) -> int:
        return min(self.warmup, self.n_max)

    def decide(self, episode) -> Step:
        if episode.n < self.warmup:
            return Step(False, min(self.warmup, self.n_max))
        score, code = episode.arrays()
        share = float(leading_share(score, code)[0, -1])
        if share >= self.tau:
            return Step(True, episode.n, "consensus", {"share": share})
        return Step(False, episode.n + 1, "", {"share": share})

    def replay_stops(self, batch):
        width = min(batch.shape[2], self.n_max)
        share = leading_share(batch.flat("score")[:, :width], batch.flat("answer")[:, :width])
        pos = np.arange(1, width + 1)[None, :]
        hit = (share >= self.tau) & (pos >= self.warmup) & (pos <= batch.flat_available()[:, None])
        return np.where(hit.any(axis=1), hit.argmax(axis=1) + 1, self.n_max), {}
