"""Verifiers that turn a response into a score in [0, 1], batched and async.

* :mod:`.vllm_prm` - a process reward model (e.g. Qwen2.5-Math-PRM-7B) served by vLLM's
  pooling API: the response is split into steps, each step gets the probability of being
  correct, and the step scores are aggregated (:mod:`.base`).
* :mod:`.local_prm` - the same PRM run in-process with ``transformers``.
* :mod:`.judge` - any OpenAI-compatible chat model asked "Is this solution correct?".
* :mod:`.confidence` - no second model: the generator's own token probabilities.
* :mod:`.batching` - gathers requests of concurrent samples into batches.

:data:`SCORERS` (:mod:`.registry`) lists them with their settings; :func:`scorer_settings`
validates ``--scorer-set`` values and :func:`build_scorer` builds one.
"""

from .base import (
    PRM_SYSTEM,
    Aggregate,
    PrmStepSettings,
    Score,
    Scorer,
    ScoreRequest,
    ScoringError,
    aggregate_steps,
    prm_conversation,
    split_steps,
)
from .batching import BatchingScorer, ScorerStats
from .confidence import ConfidenceScorer
from .judge import JUDGE_PROMPT, JudgeScorer, JudgeSettings
from .local_prm import LocalPrmScorer, LocalPrmSettings
from .registry import SCORERS, ScorerContext, ScorerSpec, build_scorer, scorer_settings
from .vllm_prm import PrmSettings, VllmPrmScorer

__all__ = [
    "Aggregate", "PRM_SYSTEM", "PrmStepSettings", "Score", "Scorer", "ScoreRequest", "ScoringError",
    "aggregate_steps", "prm_conversation", "split_steps",
    "BatchingScorer", "ScorerStats", "ConfidenceScorer", "JUDGE_PROMPT", "JudgeScorer", "JudgeSettings",
    "LocalPrmScorer", "LocalPrmSettings", "PrmSettings", "VllmPrmScorer",
    "SCORERS", "ScorerContext", "ScorerSpec", "build_scorer", "scorer_settings",
]
