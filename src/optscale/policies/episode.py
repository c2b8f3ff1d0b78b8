"""The generic live episode: keeps the samples seen so far and asks its policy after each one."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InputError
from .base import Decision, Outcome, Problem, Sample
from .selection import select


@dataclass
class Step:
    """A policy's verdict after the latest sample."""

    stop: bool
    planned: int
    reason: str = ""
    estimates: dict[str, Any] = field(default_factory=dict)


def score_or_zero(score: np.ndarray) -> np.ndarray:
    """Scores with the NaN of answer-only samples as 0, so a vote returns the winner's earliest sample."""
    score = np.asarray(score, dtype=float)
    return np.nan_to_num(score, nan=0.0) if np.isnan(score).any() else score


class SequentialEpisode:
    """Drives any policy that implements ``decide(episode) -> Step`` one sample at a time."""

    def __init__(self, policy, problem: Problem | None, context: Any = None):
        self.policy = policy
        self.problem = problem or Problem()
        self.context = context
        self.scores: list[float] = []
        self.codes: list[int] = []
        self.answers: list[str | None] = []
        self.tokens: list[int] = []
        self._code_of: dict[str, int] = {}
        self._step = Step(stop=False, planned=policy.initial_plan())

    @property
    def planned(self) -> int:
        return max(self._step.planned, len(self.scores)) if not self._step.stop else len(self.scores)

    @property
    def n(self) -> int:
        return len(self.scores)

    @property
    def stopped(self) -> bool:
        return self._step.stop

    def observe(self, sample: Sample) -> Decision:
        if self._step.stop:
            raise RuntimeError("this episode has stopped; start a new one for more samples")
        where = f"problem {self.problem.id!r} sample {self.n}"
        if sample.score is None:
            if self.policy.requires_scores():
                raise self.policy.missing_scores(where, "score")
            score = math.nan
        else:
            score = float(sample.score)
            if not (0.0 <= score <= 1.0) or math.isnan(score):
                raise InputError(f"score must lie in [0, 1], got {sample.score!r}", where)
        if self.scores and math.isnan(score) != math.isnan(self.scores[0]):
            state = "none" if math.isnan(score) else "one"
            raise InputError(f"has {state}, but sample 0 {'has one' if state == 'none' else 'has none'}: "
                             "an episode's samples all have a score or none has", f"{where} field score")
        self.scores.append(score)
        self.answers.append(sample.answer)
        self.tokens.append(int(sample.tokens))
        self.codes.append(self._code(sample.answer))
        step = self.policy.decide(self)
        if not step.stop and self.n >= self.policy.n_max:
            step = Step(True, self.n, "n_max", step.estimates)
        self._step = step
        return Decision.STOP if step.stop else Decision.CONTINUE

    def _code(self, answer: str | None) -> int:
        from ..answers import normalize_answer

        key = normalize_answer(answer)
        if key is None:
            return -1
        return self._code_of.setdefault(key, len(self._code_of))

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Scores and answer codes so far, as a batch of one row."""
        return np.array([self.scores], dtype=float), np.array([self.codes], dtype=np.int64)

    def result(self) -> Outcome:
        chosen = None
        if self.n:
            score, code = self.arrays()
            pos = int(select(self.policy.select, score_or_zero(score), code, np.array([self.n]))[0])
            chosen = pos if pos >= 0 else None
        return Outcome(
            chosen=chosen,
            answer=None if chosen is None else self.answers[chosen],
            n_samples=self.n,
            stop_reason=self._step.reason if self._step.stop else "running",
            estimates=dict(self._step.estimates),
        )
