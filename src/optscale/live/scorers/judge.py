"""LLM-as-judge: the probability that a chat model answers "Yes" to "Is this solution correct?"."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field, field_serializer, field_validator

from ...errors import InputError
from ..openai import OpenAIGenerator
from ..secrets import redact_url
from ..types import ApiKey, Completion, GenerationSettings, Prompt
from .base import Score, ScoreRequest, clip, reported_tokens

__all__ = ["JUDGE_PROMPT", "JudgeScorer", "JudgeSettings"]

JUDGE_PROMPT = (
    "Here is a problem and a proposed solution.\n\nProblem:\n{question}\n\nProposed solution:\n{solution}\n\n"
    "Is this solution correct? Answer with Yes or No only."
)


class JudgeSettings(BaseModel):
    """Settings of the judge scorer (``--scorer-set`` keys on the command line)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: list[str] | None = Field(None, min_length=1, description="judge server(s); default: the generator's")
    model: str | None = Field(None, min_length=1, description="judge model; default: the generator's model")
    prompt: str | None = Field(None, description="judge prompt with {question} and {solution}")
    concurrency: int = Field(8, ge=1, le=1024, description="judge requests under way at once")
    api_key: ApiKey | None = Field(None, exclude=True,
                                   description="key of the judge's server (never the generator's); "
                                                  "env OPTSCALE_JUDGE_API_KEY")

    @field_validator("prompt")
    @classmethod
    def _placeholders(cls, prompt: str | None) -> str | None:
        missing = [key for key in ("{question}", "{solution}") if prompt is not None and key not in prompt]
        if missing:
            raise ValueError(f"the judge prompt must contain {' and '.join(missing)}")
        return prompt

    @field_serializer("base_url")
    def _no_credentials(self, urls: list[str] | None) -> list[str] | None:
        return [redact_url(u) for u in urls] if urls is not None else None


class JudgeScorer:
    """LLM-as-judge: the probability that a chat model answers "Yes" to "Is this solution correct?"."""

    kind = "judge"
    needs_logprobs = False

    def __init__(self, judge: OpenAIGenerator, prompt: str = JUDGE_PROMPT, max_chars: int = 12000,
                 concurrency: int = 8):
        if judge.kind != "chat":
            raise InputError("the judge needs a chat endpoint", "scorer.base_url")
        for key in ("{question}", "{solution}"):
            if key not in prompt:
                raise InputError(f"the judge prompt must contain {key}", "scorer.prompt")
        self.judge = judge
        self.prompt = prompt
        self.max_chars = max_chars
        self._limit = asyncio.Semaphore(concurrency)
        self._settings = GenerationSettings(temperature=0.0, max_tokens=1, logprobs=True, top_logprobs=20,
                                            stream=False)

    async def check(self) -> None:
        await self.judge.check(need_logprobs=True, why="scorer")
        [score] = await self.score([ScoreRequest("What is 1 + 1?", "1 + 1 = 2, so the answer is \\boxed{2}.")])
        if score.flag == "judge_no_logprobs":
            raise InputError("the judge model's server returned no top logprobs; the judge scorer reads "
                             "P(Yes) from them", "scorer")

    def _messages(self, item: ScoreRequest) -> tuple[dict[str, str], ...]:
        solution = item.text[-self.max_chars:]
        text = self.prompt.replace("{question}", item.question).replace("{solution}", solution)
        return ({"role": "user", "content": text},)

    @staticmethod
    def _spent(reply: Completion) -> int | None:
        """The judge call's prompt and completion tokens, when its server reported both."""
        prompt = reported_tokens(reply.prompt_tokens)
        if prompt is None or reply.tokens_source == "unknown" or reply.usage_invalid:
            return None
        return prompt + reply.tokens + reply.wasted_tokens

    async def _one(self, item: ScoreRequest) -> Score:
        if not item.text.strip():
            return Score(0.0, flag="empty", tokens=0)
        async with self._limit:
            [reply, *_] = await self.judge.generate(Prompt(messages=self._messages(item)), settings=self._settings)
        tokens = self._spent(reply)
        if not reply.top_logprobs:
            return Score(0.0, flag="judge_no_logprobs", tokens=tokens)
        yes = no = 0.0
        for token, logprob in reply.top_logprobs[0].items():
            word = token.strip().lower()
            if word == "yes":
                yes += math.exp(min(logprob, 0.0))
            elif word == "no":
                no += math.exp(min(logprob, 0.0))
        if yes + no <= 0.0:
            return Score(0.0, flag="judge_no_yes_no", tokens=tokens)
        return Score(clip(yes / (yes + no)), tokens=tokens)

    async def score(self, items: Sequence[ScoreRequest]) -> list[Score]:
        return list(await asyncio.gather(*(self._one(item) for item in items)))

    async def aclose(self) -> None:
        await self.judge.aclose()
