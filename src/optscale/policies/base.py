"""The one policy interface shared by offline replay and live sampling.

A :class:`Policy` is a plain, immutable configuration object. For each problem it starts an
:class:`Episode` that sees samples arrive one at a time (score, extracted answer, tokens),
answers :data:`Decision.CONTINUE` or :data:`Decision.STOP` after each, and finally says which
sample it returns. The live sampler drives episodes directly; offline replay calls
:meth:`Policy.replay`, a vectorised equivalent over many problems and sample orders that the
tests check against driving the episodes one sample at a time.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = [
    "Decision",
    "Sample",
    "Prior",
    "Problem",
    "Outcome",
    "Episode",
    "Policy",
    "ReplayBatch",
    "ReplayDecisions",
]


class Decision(str, enum.Enum):
    """What an episode wants after seeing a sample."""

    CONTINUE = "continue"
    STOP = "stop"


@dataclass(frozen=True, slots=True)
class Sample:
    """One response as a policy sees it. ``answer`` is None when none was extracted; ``score``
    is None without a verifier (answer-only policies accept that, see ``requires_scores``)."""

    score: float | None = None
    answer: str | None = None
    tokens: int = 0


@dataclass(frozen=True, slots=True)
class Prior:
    """Gaussian prior on the truncated normal's *parameters* (not on the score moments)."""

    mu: float
    sigma: float
    width_mu: float = 0.1
    width_sigma: float = 0.1


@dataclass(frozen=True, slots=True)
class Problem:
    """What a policy may know about a problem before sampling.

    ``meta`` holds the pool's extra fields that prior sources use (``level``, ``subject``).
    """

    id: str = ""
    question: str | None = None
    prior: Prior | None = None
    meta: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Outcome:
    """The end of an episode.

    ``chosen`` indexes the observed samples (in arrival order) or is None when nothing can be
    returned (e.g. a vote over samples that all lacked an answer). ``estimates`` holds what the
    policy believed when it stopped (``mu``, ``sigma``, ``n_star``, ``fit_flag`` ...).
    """

    chosen: int | None
    answer: str | None
    n_samples: int
    stop_reason: str
    estimates: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Episode(Protocol):
    """One problem's sampling under a policy."""

    @property
    def planned(self) -> int:
        """How many samples in total the episode currently intends to draw (>= observed).

        A live sampler may launch up to this many before the next decision; it only grows
        or shrinks as estimates change, and never exceeds the policy's ``n_max``.
        """

    def observe(self, sample: Sample) -> Decision:
        """Take the next sample; after :data:`Decision.STOP` no more samples are accepted."""

    def result(self) -> Outcome:
        """The chosen sample and the reason for stopping (valid at any time)."""


@dataclass(frozen=True)
class ReplayBatch:
    """Stored samples of many problems, each in ``R`` orders, as padded arrays.

    Shapes are ``(P, R, N)``: problem, order, position within the order. Positions at or
    beyond ``available[p]`` are padding. ``answer`` holds per-problem integer codes of the
    normalised answers (``-1`` for no answer); equal codes mean equal answers.

    A batch of an answer-only pool has ``has_scores`` False and NaN scores; policies that read
    scores refuse it (``PolicyBase.replay``). ``source`` names the pool in such errors, and
    ``meta`` holds each problem's metadata for prior sources (``level``, ``subject``).
    """

    score: np.ndarray
    answer: np.ndarray
    tokens: np.ndarray
    correct: np.ndarray
    available: np.ndarray
    ids: tuple[str, ...]
    questions: tuple[str | None, ...]
    answer_text: tuple[tuple[str, ...], ...] = ()
    has_scores: bool = True
    source: str = "pool"
    meta: tuple[Mapping[str, Any] | None, ...] = ()
    cache: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.score.shape  # type: ignore[return-value]

    def flat(self, name: str) -> np.ndarray:
        """An array reshaped to ``(P * R, N)``, the layout vectorised policies work in."""
        arr = getattr(self, name)
        return arr.reshape(-1, arr.shape[-1])

    def flat_available(self) -> np.ndarray:
        p, r, _ = self.shape
        return np.repeat(self.available, r)


@dataclass(frozen=True)
class ReplayDecisions:
    """What a policy did on each (problem, order): samples used and the position it returned.

    ``chosen`` is ``-1`` where nothing was returned. ``estimates`` may hold arrays of shape
    ``(P, R)`` such as ``mu``, ``sigma``, ``n_star``, ``capped`` and ``fit_flag``.
    """

    n_used: np.ndarray
    chosen: np.ndarray
    estimates: dict[str, np.ndarray] = field(default_factory=dict)


@runtime_checkable
class Policy(Protocol):
    """A stopping-and-selection rule, configured once, applied to many problems."""

    name: str
    n_max: int

    def start(self, problem: Problem | None = None) -> Episode:
        """Begin one problem."""

    def replay(self, batch: ReplayBatch) -> ReplayDecisions:
        """Apply the policy to stored samples of many problems and orders at once."""
