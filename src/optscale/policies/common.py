"""Shared pieces of the policies: the configuration base class and prefix statistics."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from ..checks import N_MAX_LIMIT  # also importable from here, where callers found it
from ..errors import InputError
from ..fit import SufficientStats
from .base import Problem, ReplayBatch, ReplayDecisions
from .episode import SequentialEpisode, Step, score_or_zero
from .registry import POLICIES
from .selection import Selection, select


def prefix_stats(score: np.ndarray, n: np.ndarray) -> SufficientStats:
    """Count, mean and exact (two-pass) variance of the first ``n[b]`` scores of each row."""
    score = np.asarray(score, dtype=float)
    n = np.asarray(n, dtype=np.int64)
    used = np.arange(score.shape[1])[None, :] < n[:, None]
    safe = np.maximum(n, 1)
    mean = np.where(used, score, 0.0).sum(axis=1) / safe
    var = np.where(used, (score - mean[:, None]) ** 2, 0.0).sum(axis=1) / safe
    return SufficientStats(n.copy(), mean, var)


def stops_after_peek(stop: np.ndarray, peek: int, available: np.ndarray, n_max: int) -> tuple[np.ndarray, np.ndarray]:
    """Samples used per row, from decisions made after ``peek``, ``peek + 1``, ... samples (the columns of
    ``stop``), and the column of the last decision each row made (its stop, or its last sample).

    A row never decides beyond the samples it has; one that never stops uses ``n_max`` (capped later).
    """
    cols = stop.shape[1]
    stop = stop & ((peek + np.arange(cols))[None, :] <= available[:, None])
    hit = stop.any(axis=1)
    n_used = np.where(hit, peek + stop.argmax(axis=1), n_max)
    return n_used, np.clip(np.minimum(n_used, available) - peek, 0, cols - 1)


class PolicyBase(BaseModel):
    """Configuration of a policy; validated once, immutable, cheap to copy with new settings."""

    # NaN and infinity pass every bound check silently (nan < 1 is False, yet no error): refused by type.
    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True, allow_inf_nan=False)

    name: ClassVar[str] = ""
    #: Display name in report tables (the paper's for the paper's methods).
    label: ClassVar[str] = ""
    #: Whether the stopping rule reads verifier scores. Answer-only rules (sc, esc, asc, boinf)
    #: set it False; whether a configured policy needs scores also depends on its selection
    #: rule: see :meth:`requires_scores`.
    needs_scores: ClassVar[bool] = True
    n_max: int = Field(ge=1, le=N_MAX_LIMIT, description="most samples ever drawn for one problem")
    select: Selection = Field(Selection.BEST, description="how the returned sample is chosen: best, majority or weighted")

    @field_validator("peek", check_fields=False)
    @classmethod
    def _peek_within_budget(cls, value, info: ValidationInfo):
        """A peek beyond the budget would silently make the policy fixed Best-of-n_max.

        Only explicit values reach this check (no policy validates its default peek): a default
        peek above a small ``n_max`` is legitimate and capped by the policy's ``peek_size()``
        (``min(peek, n_max)``). A rule that needs more of its *effective* peek checks
        ``peek_size()`` after validation (beacon's ``_finite_mean``)."""
        n_max = info.data.get("n_max")
        if value is not None and n_max is not None and value > n_max:
            raise ValueError(f"must be at most n_max ({n_max}): a larger peek draws the whole budget, "
                             f"which is fixed Best-of-N")
        return value

    def requires_scores(self) -> bool:
        """Whether this policy, as configured, reads sample scores: its stopping rule does
        (:attr:`needs_scores`) or its selection rule does (``best``, ``weighted``)."""
        return self.needs_scores or self.select is not Selection.MAJORITY

    def missing_scores(self, source: str, field: str = "samples[].score") -> InputError:
        """The one error for a policy that reads scores given samples without them (``source``: the pool)."""
        answer_based = ", ".join(name for name, cls in POLICIES.items() if not cls.needs_scores)
        return InputError(f"policy {self.name!r} needs sample scores and {source} has none; use an answer-based "
                          f"policy ({answer_based}; with select=majority) or score the samples",
                          f"{source} field {field}")

    # -- live ----------------------------------------------------------------------------
    def start(self, problem: Problem | None = None) -> SequentialEpisode:
        return SequentialEpisode(self, problem, self.episode_context(problem or Problem()))

    def episode_context(self, problem: Problem) -> Any:
        """Per-problem state an episode needs before sampling (e.g. its prior)."""
        return {}

    def initial_plan(self) -> int:
        """Samples the policy intends before seeing any."""
        return self.n_max

    def decide(self, episode: SequentialEpisode) -> Step:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- offline -------------------------------------------------------------------------
    def replay(self, batch: ReplayBatch) -> ReplayDecisions:
        """Decisions on every problem and order of ``batch``; a batch without scores is refused
        (:class:`InputError` at ``<pool> field samples[].score``) where :meth:`requires_scores`."""
        if not batch.has_scores and self.requires_scores():
            raise self.missing_scores(batch.source)
        n_used, estimates = self.replay_stops(batch)
        return self.finish(batch, n_used, estimates)

    def replay_stops(self, batch: ReplayBatch) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Samples used per flattened (problem, order) row, and any estimates."""
        raise NotImplementedError  # pragma: no cover - abstract

    def finish(self, batch: ReplayBatch, n_used: np.ndarray, estimates: dict[str, np.ndarray]) -> ReplayDecisions:
        p, r, _ = batch.shape
        n_used = np.minimum(n_used, batch.flat_available())
        chosen = select(self.select, score_or_zero(batch.flat("score")), batch.flat("answer"), n_used)
        return ReplayDecisions(
            n_used=n_used.reshape(p, r),
            chosen=chosen.reshape(p, r),
            estimates={k: np.asarray(v).reshape(p, r) for k, v in estimates.items()},
        )

    def describe(self) -> str:
        """``name(key=value, ...)`` with the settings that differ from the defaults."""
        fields = self.model_dump(exclude_defaults=True, exclude={"n_max", "priors"})
        if getattr(self, "priors", None) is not None:
            fields["priors"] = Path(self.priors).name if isinstance(self.priors, (str, Path)) else type(self.priors).__name__
        inner = ", ".join(f"{k}={getattr(v, 'value', v)}" for k, v in fields.items())
        return f"{self.name}@{self.n_max}" + (f"({inner})" if inner else "")
