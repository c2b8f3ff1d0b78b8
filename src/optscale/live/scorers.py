"""Verifiers that turn a response into a score in [0, 1], batched and async.

* :class:`VllmPrmScorer` - a process reward model (e.g. Qwen2.5-Math-PRM-7B) served by vLLM's
  pooling API: the response is split into steps, each step gets the probability of being
  correct, and the step scores are aggregated (``mean`` as in the paper, ``min``, ``last``
  or ``product``).
* :class:`LocalPrmScorer` - the same PRM run in-process with ``transformers`` (imported
  only when used).
* :class:`JudgeScorer` - any OpenAI-compatible chat model asked "Is this solution correct?";
  the score is ``P(Yes) / (P(Yes) + P(No))`` read from the first token's top logprobs.
* :class:`ConfidenceScorer` - no second model: the geometric mean of the generator's own
  token probabilities.

A response that cannot be scored (empty text, no steps, a reward of the wrong shape) gets
score 0 and a ``flag`` saying why, so one bad sample never stops a run; a scorer that cannot
work at all (no logprobs, wrong PRM configuration) fails its :meth:`Scorer.check` with a
message naming the flag to change.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from ..errors import InputError
from .generators import GenerationSettings, OpenAIGenerator, Prompt
from .prompts import BOXED_INSTRUCTION, render_markup

__all__ = [
    "ScoreRequest",
    "Score",
    "Scorer",
    "Aggregate",
    "aggregate_steps",
    "split_steps",
    "ConfidenceScorer",
    "JudgeScorer",
    "VllmPrmScorer",
    "LocalPrmScorer",
    "BatchingScorer",
    "SCORERS",
]

Aggregate = Literal["mean", "min", "last", "product"]


@dataclass(frozen=True)
class ScoreRequest:
    """A response to score, with its question and (for the confidence scorer) its token logprobs."""

    question: str
    text: str
    logprobs: tuple[float, ...] | None = None


@dataclass(frozen=True)
class Score:
    """A score in [0, 1]; ``steps`` are the per-step scores of a PRM, ``flag`` why a score is degraded."""

    value: float
    steps: tuple[float, ...] | None = None
    flag: str | None = None


class Scorer(Protocol):
    """Scores batches of responses."""

    kind: str
    needs_logprobs: bool

    async def check(self) -> None:
        """Fail fast (``InputError`` naming the flag) when the scorer cannot work at all."""

    async def score(self, items: Sequence[ScoreRequest]) -> list[Score]:
        """One score per item, in order."""

    async def aclose(self) -> None:
        """Release connections and models."""


def split_steps(text: str, separator: str = "\n\n") -> list[str]:
    """Reasoning steps of a response: its non-blank paragraphs (the Qwen PRM convention)."""
    return [part.strip() for part in text.split(separator) if part.strip()]


def aggregate_steps(steps: Sequence[float], how: Aggregate) -> float:
    """One response score from its step scores."""
    if not steps:
        raise ValueError("no step scores")
    if how == "mean":
        return float(sum(steps) / len(steps))
    if how == "min":
        return float(min(steps))
    if how == "last":
        return float(steps[-1])
    if how == "product":
        return float(math.prod(steps))
    raise InputError(f"unknown aggregate {how!r}; choose from mean, min, last, product", "--scorer-set aggregate")


def _clip(value: float) -> float:
    return min(1.0, max(0.0, value))


def _positive_probability(entry: Any) -> float:
    """The 'correct' probability of one step from a PRM output row.

    vLLM returns per-step class probabilities ``[p_wrong, p_right]`` (softmax applied) or a
    single value; raw logits are turned into probabilities here.
    """
    if isinstance(entry, (int, float)) and not isinstance(entry, bool):
        value = float(entry)
        return value if 0.0 <= value <= 1.0 else 1.0 / (1.0 + math.exp(-value))
    if isinstance(entry, list) and entry and all(isinstance(v, (int, float)) for v in entry):
        if len(entry) == 1:
            return _positive_probability(entry[0])
        values = [float(v) for v in entry]
        if all(0.0 <= v <= 1.0 for v in values) and abs(sum(values) - 1.0) < 1e-3:
            return values[-1]
        top = max(values)
        weights = [math.exp(v - top) for v in values]
        return weights[-1] / sum(weights)
    raise ValueError(f"a step score must be a number or a list of class scores, got {str(entry)[:60]}")


class ConfidenceScorer:
    """Self-confidence: ``exp(mean token logprob)``, the geometric mean of token probabilities.

    Costs nothing beyond asking the generator for logprobs, which makes it the scorer for
    servers where a second model is not available.
    """

    kind = "confidence"
    needs_logprobs = True

    async def check(self) -> None:
        return None

    async def score(self, items: Sequence[ScoreRequest]) -> list[Score]:
        out = []
        for item in items:
            if not item.text.strip():
                out.append(Score(0.0, flag="empty"))
            elif not item.logprobs:
                out.append(Score(0.0, flag="no_logprobs"))
            else:
                out.append(Score(_clip(math.exp(sum(item.logprobs) / len(item.logprobs)))))
        return out

    async def aclose(self) -> None:
        return None


JUDGE_PROMPT = (
    "Here is a problem and a proposed solution.\n\nProblem:\n{question}\n\nProposed solution:\n{solution}\n\n"
    "Is this solution correct? Answer with Yes or No only."
)


class JudgeScorer:
    """LLM-as-judge: the probability that a chat model answers "Yes" to "Is this solution correct?"."""

    kind = "judge"
    needs_logprobs = False

    def __init__(self, judge: OpenAIGenerator, prompt: str = JUDGE_PROMPT, max_chars: int = 12000,
                 concurrency: int = 8):
        if judge.kind != "chat":
            raise InputError("the judge needs a chat endpoint", "--scorer-set base_url")
        for key in ("{question}", "{solution}"):
            if key not in prompt:
                raise InputError(f"the judge prompt must contain {key}", "--scorer-set prompt")
        self.judge = judge
        self.prompt = prompt
        self.max_chars = max_chars
        self._limit = asyncio.Semaphore(concurrency)
        self._settings = GenerationSettings(temperature=0.0, max_tokens=1, logprobs=True, top_logprobs=20,
                                            stream=False)

    async def check(self) -> None:
        await self.judge.check(need_logprobs=True, why="--scorer judge")
        [score] = await self.score([ScoreRequest("What is 1 + 1?", "1 + 1 = 2, so the answer is \\boxed{2}.")])
        if score.flag == "judge_no_logprobs":
            raise InputError("the judge model's server returned no top logprobs; the judge scorer reads "
                             "P(Yes) from them", "--scorer judge")

    def _messages(self, item: ScoreRequest) -> tuple[dict[str, str], ...]:
        solution = item.text[-self.max_chars:]
        text = self.prompt.replace("{question}", item.question).replace("{solution}", solution)
        return ({"role": "user", "content": text},)

    async def _one(self, item: ScoreRequest) -> Score:
        if not item.text.strip():
            return Score(0.0, flag="empty")
        async with self._limit:
            [reply, *_] = await self.judge.generate(Prompt(messages=self._messages(item)), settings=self._settings)
        if not reply.top_logprobs:
            return Score(0.0, flag="judge_no_logprobs")
        yes = no = 0.0
        for token, logprob in reply.top_logprobs[0].items():
            word = token.strip().lower()
            if word == "yes":
                yes += math.exp(logprob)
            elif word == "no":
                no += math.exp(logprob)
        if yes + no <= 0.0:
            return Score(0.0, flag="judge_no_yes_no")
        return Score(_clip(yes / (yes + no)))

    async def score(self, items: Sequence[ScoreRequest]) -> list[Score]:
        return list(await asyncio.gather(*(self._one(item) for item in items)))

    async def aclose(self) -> None:
        await self.judge.aclose()


PRM_SYSTEM = BOXED_INSTRUCTION


def prm_conversation(question: str, steps: Sequence[str], step_tag: str, system: str | None) -> list[dict[str, str]]:
    """The conversation a Qwen-style PRM reads: the steps joined and ended by the step tag."""
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [
        {"role": "user", "content": question},
        {"role": "assistant", "content": step_tag.join(steps) + step_tag},
    ]


class _PrmBase:
    needs_logprobs = False

    def __init__(self, aggregate: Aggregate = "mean", separator: str = "\n\n", step_tag: str = "<extra_0>",
                 system: str | None = PRM_SYSTEM, max_steps: int = 64):
        aggregate_steps([1.0], aggregate)  # validates the name
        self.aggregate = aggregate
        self.separator = separator
        self.step_tag = step_tag
        self.system = system
        self.max_steps = max_steps

    def steps(self, text: str) -> list[str]:
        """Steps of a response; past ``max_steps`` the tail is merged into the last one."""
        steps = split_steps(text, self.separator)
        if len(steps) > self.max_steps:
            steps = steps[: self.max_steps - 1] + [self.separator.join(steps[self.max_steps - 1:])]
        return steps

    def _combine(self, expected: int, raw: Any) -> Score:
        try:
            if not isinstance(raw, list):
                raise ValueError(f"expected a list of step scores, got {type(raw).__name__}")
            steps = tuple(_clip(_positive_probability(v)) for v in raw)
        except (ValueError, OverflowError) as exc:
            return Score(0.0, flag=f"prm_shape: {exc}")
        if len(steps) != expected:
            return Score(0.0, flag=f"prm_shape: expected {expected} step scores, got {len(steps)}")
        return Score(aggregate_steps(steps, self.aggregate), steps)


class VllmPrmScorer(_PrmBase):
    """A PRM behind vLLM's pooling API (``POST /pooling``).

    Serve it so that one output comes back per step tag: STEP pooling on the id of
    ``<extra_0>`` (``--override-pooler-config '{"pooling_type": "STEP", "step_tag_id": ID}'``);
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
            where = {"--base-url": "base_url", "--model": "model"}.get(exc.where or "", exc.where)
            raise InputError(exc.detail, f"--scorer-set {where}") from None
        [score] = await self.score([ScoreRequest("What is 1 + 1?", "1 + 1 = 2.\n\nSo the answer is \\boxed{2}.")])
        if score.flag:
            raise InputError(
                f"the PRM at {self.client.pool.endpoints[0].url} does not return one score per step "
                f"({score.flag}); serve it with step pooling on {self.step_tag!r} (vLLM: --task reward, or "
                "--override-pooler-config with pooling_type STEP and the step tag's token id)", "--scorer prm")

    async def score(self, items: Sequence[ScoreRequest]) -> list[Score]:
        out: list[Score | None] = [None] * len(items)
        batch: list[tuple[int, int, str]] = []
        for i, item in enumerate(items):
            steps = self.steps(item.text)
            if not steps:
                out[i] = Score(0.0, flag="empty")
            else:
                batch.append((i, len(steps), self._input(item, steps)))
        if batch:
            reply = await self.client.post_json(
                self.path, {"model": self.client.model, "input": [text for _, _, text in batch]}, root=True)
            rows = reply.get("data") if isinstance(reply, dict) else None
            by_index = {}
            if isinstance(rows, list):
                by_index = {r.get("index", k): r.get("data") for k, r in enumerate(rows) if isinstance(r, dict)}
            for k, (i, expected, _) in enumerate(batch):
                if k not in by_index:
                    out[i] = Score(0.0, flag=f"prm_shape: no output for input {k} of {len(batch)}")
                else:
                    out[i] = self._combine(expected, by_index[k])
        return [s for s in out if s is not None]

    async def aclose(self) -> None:
        await self.client.aclose()


class LocalPrmScorer(_PrmBase):
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
                             "--scorer prm-local") from None
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(self.model_name, trust_remote_code=True)
            config = AutoConfig.from_pretrained(self.model_name, trust_remote_code=True)
            # Qwen's PRMs bring their own class (auto_map); other PRMs are token classifiers.
            auto = AutoModel if "AutoModel" in (getattr(config, "auto_map", None) or {}) \
                else AutoModelForTokenClassification
            model = auto.from_pretrained(self.model_name, trust_remote_code=True, dtype=self.dtype)
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot load the PRM: {exc}", "--scorer-set model") from None
        if self._tokenizer.pad_token is None:
            self._tokenizer.pad_token = self._tokenizer.eos_token
        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self._model = model.to(device).eval()
        ids = self._tokenizer.encode(self.step_tag, add_special_tokens=False)
        if len(ids) != 1:
            raise InputError(f"the step tag {self.step_tag!r} is not one token of this tokenizer",
                             "--scorer-set step_tag")
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
                                     "--scorer-set model")
                probs = torch.softmax(logits.float(), dim=-1)[..., 1]
                mask = (enc["input_ids"] == self._tag_id) & enc["attention_mask"].bool()
                for row, k in enumerate(live):
                    scores[k] = self._combine(len(steps[k]), probs[row][mask[row]].tolist())
            out.extend(scores.get(k, Score(0.0, flag="empty")) for k in range(len(chunk)))
        return out

    async def check(self) -> None:
        async with self._lock:
            await asyncio.to_thread(self._run, [ScoreRequest("What is 1 + 1?", "1 + 1 = 2.")])

    async def score(self, items: Sequence[ScoreRequest]) -> list[Score]:
        async with self._lock:
            return await asyncio.to_thread(self._run, list(items))

    async def aclose(self) -> None:
        self._model = None


SCORERS = ("prm", "prm-local", "judge", "confidence")


class BatchingScorer:
    """Collects requests from many concurrent samples into batches for the underlying scorer.

    Workers take whatever is queued (up to ``max_batch``) the moment they are free, so batches
    grow exactly when the scorer is the bottleneck and no request waits on a timer.
    """

    def __init__(self, scorer: Scorer, max_batch: int = 16, workers: int = 4):
        self.scorer = scorer
        self.max_batch = max_batch
        self.workers = workers
        self._queue: asyncio.Queue[tuple[ScoreRequest, asyncio.Future[Score]]] | None = None
        self._tasks: list[asyncio.Task] = []

    def _start(self) -> asyncio.Queue:
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._tasks = [asyncio.create_task(self._work(self._queue)) for _ in range(self.workers)]
        return self._queue

    async def _work(self, queue: asyncio.Queue) -> None:
        while True:
            batch = [await queue.get()]
            while len(batch) < self.max_batch and not queue.empty():
                batch.append(queue.get_nowait())
            batch = [(item, future) for item, future in batch if not future.done()]
            if not batch:
                continue
            try:
                scores = await self.scorer.score([item for item, _ in batch])
            except Exception as exc:  # delivered to every waiting sample, which decides what it means
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), score in zip(batch, scores):
                if not future.done():
                    future.set_result(score)

    async def score(self, items: Sequence[ScoreRequest]) -> list[Score]:
        queue = self._start()
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in items]
        for item, future in zip(items, futures):
            queue.put_nowait((item, future))
        return list(await asyncio.gather(*futures))

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks, self._queue = [], None
