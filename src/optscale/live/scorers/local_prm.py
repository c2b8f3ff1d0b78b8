"""The process reward model run in this process with ``transformers`` (imported only when used)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from typing import Any

from pydantic import Field

from ...errors import InputError
from .base import PrmBase, PrmStepSettings, Score, ScoreRequest, prm_conversation

__all__ = ["LocalPrmSettings", "LocalPrmScorer"]


class LocalPrmSettings(PrmStepSettings):
    """Settings of the in-process PRM scorer (``--scorer-set`` keys on the command line)."""

    model: str = Field(min_length=1, description="a local path or hub name of the PRM (transformers)")
    device: str | None = Field(None, description="torch device, e.g. cuda:0 or cpu; default: cuda when available")
    batch_size: int = Field(8, ge=1, le=4096, description="responses per forward pass")
    dtype: str = Field("auto", description="torch dtype of the weights, e.g. auto, bfloat16, float32")


class LocalPrmScorer(PrmBase):
    """The PRM run in this process with ``transformers`` and ``torch`` (installed separately).

    Follows the Qwen2.5-Math-PRM model card: the model's two-class logits at each step tag give
    the step's probability of being correct. Batches run in a worker thread so the event
    loop keeps streaming other responses meanwhile.
    """

    kind = "prm-local"

    def __init__(self, model: str, device: str | None = None, batch_size: int = 8, dtype: str = "auto",
                 **kwargs: Any):
        super().__init__(**kwargs)
        self.model_name = model
        self.device = device
        self.batch_size = batch_size
        self.dtype = dtype
        self._model: Any = None
        self._tokenizer: Any = None
        self._lock = asyncio.Lock()

    def _load(self) -> None:
        try:
            import torch
            from transformers import AutoConfig, AutoModel, AutoModelForTokenClassification, AutoTokenizer
        except ImportError:
            raise InputError("the local PRM needs torch and transformers (pip install torch transformers)",
                             "scorer") from None
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(self.model_name, trust_remote_code=True)
            config = AutoConfig.from_pretrained(self.model_name, trust_remote_code=True)
            # Qwen's PRMs bring their own class (auto_map); other PRMs are token classifiers.
            auto = AutoModel if "AutoModel" in (getattr(config, "auto_map", None) or {}) \
                else AutoModelForTokenClassification
            model = auto.from_pretrained(self.model_name, trust_remote_code=True, dtype=self.dtype)
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot load the PRM: {exc}", "scorer.model") from None
        if self._tokenizer.pad_token is None:
            self._tokenizer.pad_token = self._tokenizer.eos_token
        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self._model = model.to(device).eval()
        ids = self._tokenizer.encode(self.step_tag, add_special_tokens=False)
        if len(ids) != 1:
            raise InputError(f"the step tag {self.step_tag!r} is not one token of this tokenizer",
                             "scorer.step_tag")
        self._tag_id = ids[0]

    def _text(self, item: ScoreRequest, steps: list[str]) -> str:
        conversation = prm_conversation(item.question, steps, self.step_tag, self.system)
        return self._tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=False)

    def _run(self, items: Sequence[ScoreRequest]) -> list[Score]:
        import torch

        if self._model is None:
            self._load()
        out: list[Score] = []
        for start in range(0, len(items), self.batch_size):
            chunk = items[start:start + self.batch_size]
            steps = [self.steps(item.text) for item in chunk]
            live = [k for k, s in enumerate(steps) if s]
            scores: dict[int, Score] = {}
            if live:
                texts = [self._text(chunk[k], steps[k]) for k in live]
                enc = self._tokenizer(texts, return_tensors="pt", padding=True).to(self._model.device)
                with torch.no_grad():
                    logits = self._model(**enc)[0]
                if logits.ndim != 3 or logits.shape[-1] != 2:
                    raise InputError(f"expected two-class logits per token, got shape {tuple(logits.shape)}",
                                     "scorer.model")
                probs = torch.softmax(logits.float(), dim=-1)[..., 1]
                mask = (enc["input_ids"] == self._tag_id) & enc["attention_mask"].bool()
                sizes = enc["attention_mask"].sum(dim=-1).tolist()
                for row, k in enumerate(live):
                    score = self.combine(len(steps[k]), probs[row][mask[row]].tolist())
                    scores[k] = dataclasses.replace(score, tokens=int(sizes[row]))
            out.extend(scores.get(k, Score(0.0, flag="empty", tokens=0)) for k in range(len(chunk)))
        return out

    async def check(self) -> None:
        async with self._lock:
            await asyncio.to_thread(self._run, [ScoreRequest("What is 1 + 1?", "1 + 1 = 2.")])

    async def score(self, items: Sequence[ScoreRequest]) -> list[Score]:
        async with self._lock:
            return await asyncio.to_thread(self._run, list(items))

    async def aclose(self) -> None:
        self._model = None
