"""A process reward model behind vLLM's pooling API (``POST /pooling``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field, field_serializer

from ...errors import InputError
from ..openai import OpenAIGenerator
from ..prompts import render_markup
from ..secrets import redact_url
from ..types import ApiKey
from .base import PrmBase, PrmStepSettings, Score, ScoreRequest, prm_conversation, reported_tokens, share_tokens

__all__ = ["PrmSettings", "VllmPrmScorer"]


class PrmSettings(PrmStepSettings):
    """Settings of the vLLM PRM scorer (``--scorer-set`` keys on the command line)."""

    base_url: list[str] = Field(min_length=1, description="the vLLM server(s) of the PRM, e.g. http://host:8001/v1")
    model: str = Field(min_length=1, description="the PRM's served name, e.g. Qwen/Qwen2.5-Math-PRM-7B")
    markup: Literal["chatml", "llama3", "plain"] = Field("chatml", description="chat markup the PRM's input is "
                                                                               "written in: chatml, llama3 or plain")
    path: str = Field("/pooling", pattern=r"^/", description="the pooling endpoint under the server root")
    api_key: ApiKey | None = Field(None, exclude=True,
                                   description="key of the PRM's server (never the generator's); "
                                                  "env OPTSCALE_PRM_API_KEY")

    @field_serializer("base_url")
    def _no_credentials(self, urls: list[str]) -> list[str]:
        return [redact_url(u) for u in urls]


class VllmPrmScorer(PrmBase):
    """A PRM behind vLLM's pooling API (``POST /pooling``).

    The response is split into steps, each step gets the probability of being correct, and
    the step scores are aggregated (``mean`` as in the paper, ``min``, ``last`` or
    ``product``). Serve it so that one output comes back per step tag: STEP pooling on the
    id of ``<extra_0>`` (``--override-pooler-config '{"pooling_type": "STEP", "step_tag_id": ID}'``);
    without it vLLM returns one output per token, which :meth:`check` refuses. Each request
    carries a batch of conversations written out in ``markup``.
    """

    kind = "prm"

    def __init__(self, client: OpenAIGenerator, markup: str = "chatml", path: str = "/pooling", **kwargs: Any):
        super().__init__(**kwargs)
        render_markup(markup, [])  # validates the name
        self.client = client
        self.markup = markup
        self.path = path

    def _input(self, item: ScoreRequest, steps: list[str]) -> str:
        conversation = prm_conversation(item.question, steps, self.step_tag, self.system)
        return render_markup(self.markup, conversation, open_assistant=False)

    async def check(self) -> None:
        try:
            await self.client.check_servers()
        except InputError as exc:
            where = exc.where or "base_url"
            raise InputError(exc.detail, where if where.startswith("scorer") else f"scorer.{where}") from None
        [score] = await self.score([ScoreRequest("What is 1 + 1?", "1 + 1 = 2.\n\nSo the answer is \\boxed{2}.")])
        if score.flag:
            raise InputError(
                f"the PRM at {self.client.pool.endpoints[0].label} does not return one score per step "
                f"({score.flag}); serve it with step pooling on {self.step_tag!r} (vLLM: --task reward, or "
                "--override-pooler-config with pooling_type STEP and the step tag's token id)", "scorer")

    async def score(self, items: Sequence[ScoreRequest]) -> list[Score]:
        out: list[Score | None] = [None] * len(items)
        batch: list[tuple[int, int, str]] = []
        for i, item in enumerate(items):
            steps = self.steps(item.text)
            if not steps:
                out[i] = Score(0.0, flag="empty", tokens=0)
            else:
                batch.append((i, len(steps), self._input(item, steps)))
        if batch:
            reply = await self.client.post_json(
                self.path, {"model": self.client.model, "input": [text for _, _, text in batch]}, root=True)
            rows = reply.get("data") if isinstance(reply, dict) else None
            usage = reply.get("usage") if isinstance(reply, dict) else None
            usage = usage if isinstance(usage, dict) else {}
            spent = reported_tokens(usage.get("total_tokens", usage.get("prompt_tokens")))
            shares = share_tokens(spent, [len(text) for _, _, text in batch])
            by_index: dict[int, Any] = {}
            for k, row in enumerate(rows if isinstance(rows, list) else []):
                index = row.get("index", k) if isinstance(row, dict) else None
                if isinstance(index, int) and not isinstance(index, bool):
                    by_index[index] = row.get("data")
            for k, (i, expected, _) in enumerate(batch):
                if k not in by_index:
                    score = Score(0.0, flag=f"prm_shape: no output for input {k} of {len(batch)}")
                else:
                    score = self.combine(expected, by_index[k])
                out[i] = dataclasses.replace(score, tokens=shares[k])
        return [s for s in out if s is not None]

    async def aclose(self) -> None:
        await self.client.aclose()
