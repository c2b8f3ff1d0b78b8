"""Live adaptive sampling against OpenAI-compatible inference servers.

``await sample_problems(problems, generator, scorer, policy, store=RunStore(dir))`` draws
samples per problem only while the policy (the same objects offline replay uses) asks for
more, scoring each as it arrives and cancelling requests it no longer needs. The CLI's
``optscale run`` and ``optscale pool`` are thin wrappers around it.

Layout: :mod:`.types` (settings, prompts, completions, errors), :mod:`.transport` (HTTP:
endpoint pool, retries, timeouts), :mod:`.openai` (the OpenAI protocol), :mod:`.scorers`
(verifiers and their registry), :mod:`.sampler` (the adaptive loop). One episode on its own (a
server's request): ``await EpisodeSampler(generator, scorer).run_episode(episode, problem, prompt,
limits=EpisodeLimits(deadline=..., max_total_tokens=..., cancel=event))``.
"""

from .datasets import DatasetSpec, LiveProblem, load_problems
from .openai import OpenAIGenerator
from .prompts import BOXED_INSTRUCTION, PromptTemplate
from .runs import MemoryStore, RunState, RunStore
from .sampler import (
    EpisodeLimits,
    EpisodeRun,
    EpisodeSampler,
    Listener,
    ProblemResult,
    SamplerSettings,
    sample_problems,
)
from .scorers import (
    SCORERS,
    BatchingScorer,
    ConfidenceScorer,
    JudgeScorer,
    JudgeSettings,
    LocalPrmScorer,
    LocalPrmSettings,
    PrmSettings,
    Score,
    ScoreRequest,
    Scorer,
    ScorerContext,
    ScorerSpec,
    ScoringError,
    VllmPrmScorer,
    aggregate_steps,
    build_scorer,
    scorer_settings,
    split_steps,
)
from .transport import EndpointPool, HttpTransport
from .types import (
    ClientSettings,
    Completion,
    EndpointKind,
    GenerationError,
    GenerationSettings,
    Prompt,
    RequestFailed,
    RequestRejected,
    TokenMeter,
)

__all__ = [
    "DatasetSpec", "LiveProblem", "load_problems",
    "ClientSettings", "Completion", "EndpointKind", "EndpointPool", "GenerationError", "GenerationSettings",
    "HttpTransport", "OpenAIGenerator", "Prompt", "RequestFailed", "RequestRejected", "TokenMeter",
    "BOXED_INSTRUCTION", "PromptTemplate",
    "MemoryStore", "RunState", "RunStore",
    "EpisodeLimits", "EpisodeRun", "EpisodeSampler", "Listener", "ProblemResult", "SamplerSettings",
    "sample_problems",
    "SCORERS", "BatchingScorer", "ConfidenceScorer", "JudgeScorer", "JudgeSettings", "LocalPrmScorer",
    "LocalPrmSettings", "PrmSettings", "Score", "Scorer", "ScoreRequest", "ScorerContext", "ScorerSpec",
    "ScoringError", "VllmPrmScorer", "aggregate_steps", "build_scorer", "scorer_settings", "split_steps",
]
