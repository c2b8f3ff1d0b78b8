"""Live adaptive sampling against OpenAI-compatible inference servers.

``await sample_problems(problems, generator, scorer, policy, store=RunStore(dir))`` draws
samples per problem only while the policy (the same objects offline replay uses) asks for
more, scoring each as it arrives and cancelling requests it no longer needs. The CLI's
``optscale run`` and ``optscale pool`` are thin wrappers around it.
"""

from .datasets import DatasetSpec, LiveProblem, load_problems
from .generators import (
    ClientSettings,
    Completion,
    EndpointPool,
    GenerationError,
    GenerationSettings,
    OpenAIGenerator,
    Prompt,
    RequestFailed,
    RequestRejected,
    TokenMeter,
)
from .prompts import BOXED_INSTRUCTION, PromptTemplate
from .runs import MemoryStore, RunState, RunStore
from .sampler import Listener, ProblemResult, SamplerSettings, sample_problems
from .scorers import (
    SCORERS,
    BatchingScorer,
    ConfidenceScorer,
    JudgeScorer,
    LocalPrmScorer,
    Score,
    Scorer,
    ScoreRequest,
    VllmPrmScorer,
    aggregate_steps,
    split_steps,
)

__all__ = [
    "DatasetSpec", "LiveProblem", "load_problems",
    "ClientSettings", "Completion", "EndpointPool", "GenerationError", "GenerationSettings", "OpenAIGenerator",
    "Prompt", "RequestFailed", "RequestRejected", "TokenMeter",
    "BOXED_INSTRUCTION", "PromptTemplate",
    "MemoryStore", "RunState", "RunStore",
    "Listener", "ProblemResult", "SamplerSettings", "sample_problems",
    "SCORERS", "BatchingScorer", "ConfidenceScorer", "JudgeScorer", "LocalPrmScorer", "Score", "Scorer",
    "ScoreRequest", "VllmPrmScorer", "aggregate_steps", "split_steps",
]
