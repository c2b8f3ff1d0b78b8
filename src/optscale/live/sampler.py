"""The live adaptive sampler: generate, score, ask the policy, cancel what is no longer needed.

Each problem runs as one task. It keeps up to ``in_flight`` samples under way (never more than
its episode still plans), all problems share ``concurrency`` generation requests, and every
scored sample is logged durably *before* the policy sees it. When the policy stops, requests
still under way are cancelled (their streams closed) and what they had already cost is
logged. A failing request is retried inside the generator and, if it still fails, logged and
replaced; it never holds up other problems. Errors that no retry can fix (a wrong model name,
a scorer that cannot work) stop the whole run, after everything in flight has been accounted.

The same policy objects as offline replay decide, so a live run and a replay of its pool can
be compared sample for sample. :class:`EpisodeSampler` is that loop for one episode, public:
:func:`sample_problems` (``optscale run``) runs one per problem, and ``optscale serve`` one per
request, passing the episode's :class:`EpisodeLimits` (deadline, token cap, cancellation) and a
request gate that several concurrent episodes share.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from contextlib import AbstractAsyncContextManager
from typing import Any, ClassVar, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from ..answers import extract_answer
from ..answers.grade import Grade, grade_async
from ..errors import InputError
from ..policies.base import Decision, Episode, Outcome, Policy, Problem, Sample
from .datasets import LiveProblem
from .openai import OpenAIGenerator
from .prompts import PromptTemplate
from .runs import MemoryStore, ProblemLog, RunState
from .scorers import BatchingScorer, Score, Scorer, ScoreRequest
from .types import Completion, GenerationSettings, Prompt, RequestFailed, TokenMeter

__all__ = ["SamplerSettings", "ProblemResult", "Listener", "Store", "EpisodeLimits", "EpisodeRun", "EpisodeSampler",
           "sample_episode", "sample_problems", "sample_seed", "summarize", "plain"]

log = logging.getLogger(__name__)


class SamplerSettings(BaseModel):
    """How hard to push the servers, and how responses become samples.

    ``concurrency`` caps generation requests under way across all problems; ``in_flight``
    caps samples under way for one problem (the wave size); ``problems_in_flight`` caps the
    problems worked on at once (default: ``concurrency``). ``max_failures`` failed requests
    make a problem give up for this session (it stays unfinished and resumable).
    ``zero_unanswered`` gives score 0 (flag ``no_answer``) to a response without a final
    answer, which Best-of-N could otherwise return.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    concurrency: int = Field(8, ge=1, le=100_000, description="generation requests under way at once, all problems")
    in_flight: int = Field(4, ge=1, le=100_000, description="samples under way at once for one problem")
    problems_in_flight: int | None = Field(None, ge=1, le=100_000,
                                           description="problems worked on at once; default: concurrency")
    n_per_request: int = Field(1, ge=1, le=1024, description="samples asked of one request (the n parameter)")
    max_failures: int = Field(3, ge=1, description="failed requests after which a problem gives up this session")
    answer_style: Literal["auto", "boxed", "number"] = Field(
        "auto", description="how the final answer is read: auto, boxed or number")
    zero_unanswered: bool = Field(True, description="score 0 for a response without a final answer")


class Store(Protocol):
    """Where the sampler logs events: a :class:`~optscale.live.runs.RunStore` or :class:`MemoryStore`."""

    def load(self) -> RunState: ...

    async def append(self, record: dict[str, Any]) -> None: ...

    async def finish(self, summary: dict[str, Any]) -> None: ...


class Listener:
    """Progress hooks (all optional): override what you need."""

    def on_start(self, problems: int) -> None:
        """Sampling begins (the servers passed their checks) for this many problems."""

    def on_record(self, record: dict[str, Any]) -> None:
        """A sample, cancellation or failure was logged."""

    def on_problem(self, result: ProblemResult) -> None:
        """A problem finished (or gave up for this session, with ``error`` set)."""


@dataclass
class ProblemResult:
    """One problem's outcome and its record.

    ``samples`` hold everything of each sample except its ``text``, which went to the store
    (``samples.jsonl`` of a run folder) and is not kept in memory for the whole run.
    """

    id: str
    answer: str | None
    correct: bool | None
    n_samples: int
    tokens: int
    stop_reason: str
    estimates: dict[str, Any] = field(default_factory=dict)
    chosen: str | None = None
    samples: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def plain(value: Any) -> Any:
    """numpy scalars (and mappings and lists of them) as Python values, so estimates can go into JSON."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    item = getattr(value, "item", None)
    return item() if callable(item) else value


def summarize(problem: LiveProblem, samples: list[dict], events: list[dict], outcome: Outcome,
              policy: str, verdict: Grade | None = None) -> dict[str, Any]:
    """The ``problems.jsonl`` line of a finished problem; all token totals come from the log.

    ``verdict`` is the grade of the chosen answer (None without a gold answer). A total that
    is not known for every sample (servers that stream without a usage report send no prompt
    size) is ``None``, never a partial sum. ``tokens_unknown`` counts the responses and
    requests whose token count nobody reported (logged as 0 with ``tokens_source``
    ``unknown``), so that ``tokens`` is known to be a lower bound; ``n_flagged`` counts
    samples with a ``flag`` or an invalid usage report.
    """
    chosen = samples[outcome.chosen] if outcome.chosen is not None else None
    sample_tokens = sum(int(s["tokens"]) + int(s.get("wasted_tokens") or 0) for s in samples)
    cancelled = [e for e in events if e["type"] == "cancelled"]
    failed = [e for e in events if e["type"] == "failed"]
    cancelled_tokens = sum(int(e["tokens"]) for e in cancelled)
    failed_tokens = sum(int(e["tokens"]) for e in failed)
    prompt_sizes = [s.get("prompt_tokens") for s in samples]
    return {
        "id": problem.id,
        "gold": problem.answer,
        "answer": outcome.answer,
        "correct": verdict.correct if verdict is not None else None,
        "grade_status": verdict.status if verdict is not None else None,
        "n_samples": outcome.n_samples,
        "tokens": sample_tokens + cancelled_tokens + failed_tokens,
        "sample_tokens": sample_tokens,
        "cancelled_tokens": cancelled_tokens,
        "failed_tokens": failed_tokens,
        "prompt_tokens": sum(prompt_sizes) if None not in prompt_sizes else None,
        "n_cancelled": len(cancelled),
        "n_failed": len(failed),
        "n_flagged": sum(1 for s in samples if s.get("flag") or s.get("usage_invalid")),
        "n_usage_invalid": sum(1 for s in samples if s.get("usage_invalid")),
        "tokens_unknown": sum(1 for r in samples + events if r.get("tokens_source") == "unknown"),
        "stop_reason": outcome.stop_reason,
        "chosen": chosen["id"] if chosen else None,
        "score": chosen["score"] if chosen else None,
        "estimates": {k: plain(v) for k, v in outcome.estimates.items()},
        "policy": policy,
    }


def _lean(record: dict[str, Any]) -> dict[str, Any]:
    """A logged record without its text (kept by the store, not in memory for the whole run)."""
    return {k: v for k, v in record.items() if k != "text"} if "text" in record else record


def sample_seed(run_seed: int, problem_id: str, index: int) -> int:
    """The seed sent with sample ``index`` of a problem when the run has a seed."""
    return (run_seed * 1_000_003 + zlib.crc32(problem_id.encode()) * 65_537 + index) % 2**31


@dataclass
class _Slot:
    """One request under way: the sample indices it will fill and what it has cost so far."""

    indices: list[int]
    meter: TokenMeter = field(default_factory=TokenMeter)
    stage: str = "queued"
    completions: list[Completion] | None = None
    scores: list[Score] | None = None
    done_at: int = 0

    def cost(self) -> int:
        if self.completions is not None:
            return sum(c.tokens for c in self.completions) + self.meter.wasted
        return self.meter.total


@dataclass(frozen=True)
class EpisodeLimits:
    """What ends one episode's sampling before its policy stops it; every limit is optional.

    ``deadline`` is a ``time.monotonic()`` value. ``max_total_tokens`` caps the completion
    tokens the episode generates, those of cancelled and failed requests included (new
    samples are launched only while they fit if each ran to its ``max_tokens``; see
    :meth:`EpisodeSampler.run_episode`). Setting ``cancel`` ends sampling at once (the
    caller's own reason: a shutdown, a client that no longer waits) with the samples so far.
    Whichever limit ends sampling is named by :attr:`EpisodeRun.cut`.
    """

    deadline: float | None = None
    max_total_tokens: int | None = None
    cancel: asyncio.Event | None = None

    TOKEN_POLL_S: ClassVar[float] = 0.02
    """How often the spend of requests under way is re-read when a token cap is set."""

    def wait(self) -> float | None:
        """How long to wait for the next request: up to the deadline, or a poll of the streamed tokens."""
        waits = []
        if self.deadline is not None:
            waits.append(max(0.0, self.deadline - time.monotonic()))
        if self.max_total_tokens is not None:
            waits.append(self.TOKEN_POLL_S)
        return min(waits) if waits else None

    def reached(self, spent: int) -> str | None:
        """``"cancelled"``, ``"deadline"`` or ``"max_total_tokens"`` when that limit is reached (``spent``:
        the tokens generated so far, requests under way included), else None."""
        if self.cancel is not None and self.cancel.is_set():
            return "cancelled"
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return "deadline"
        if self.max_total_tokens is not None and spent >= self.max_total_tokens:
            return "max_total_tokens"
        return None


@dataclass
class EpisodeRun:
    """What :meth:`EpisodeSampler.run_episode` did.

    ``samples`` are the scored samples in the order the episode observed them, ``events`` the
    cancelled and failed requests with the tokens they cost (both with the records of
    ``earlier`` first). Records keep their ``text`` when the sampler has no store; a store
    keeps the texts instead (a run folder's ``samples.jsonl``). ``cut`` is ``"deadline"``,
    ``"max_total_tokens"`` or ``"cancelled"`` when that limit ended sampling before the
    policy stopped; ``error`` says why sampling gave up (``max_failures`` failed requests),
    and ``failure`` is the last of those failures (its upstream ``status`` and
    ``retry_after``, when the upstream sent them).
    """

    samples: list[dict[str, Any]]
    events: list[dict[str, Any]]
    cut: str | None = None
    error: str | None = None
    failure: RequestFailed | None = None

    def spent(self) -> int:
        """Completion tokens of every logged record: samples, the attempts they retried, cancelled and failed."""
        return _spent(self.samples, self.events)


def _spent(samples: list[dict[str, Any]], events: list[dict[str, Any]]) -> int:
    return sum(int(r["tokens"]) + int(r.get("wasted_tokens") or 0) for r in samples + events)


class EpisodeSampler:
    """Runs episodes on one model: the adaptive loop behind both ``optscale run`` and ``optscale serve``.

    What the episodes share is given once: the generator, the scorer (called as is, and not
    closed here: wrap it in one :class:`~optscale.live.scorers.BatchingScorer` shared by the
    episodes), the sampler ``settings``, the ``store`` every record is logged to before the
    policy sees it (none: the records are kept in the :class:`EpisodeRun` only, texts
    included), the ``listener``, ``generation`` settings overriding the generator's, and
    ``requests``, which every generation request holds while it runs (default: a gate of
    ``settings.concurrency``; a server passes one lane of a limiter its requests share).
    Each :meth:`run_episode` then samples one episode under its own :class:`EpisodeLimits`.
    """

    def __init__(self, generator: OpenAIGenerator, scorer: Scorer, settings: SamplerSettings | None = None, *,
                 store: Store | None = None, listener: Listener | None = None,
                 generation: GenerationSettings | None = None, requests: AbstractAsyncContextManager | None = None):
        self.generator = generator
        self.scorer = scorer
        self.settings = settings = settings or SamplerSettings()
        self.store = store
        self.listener = listener or Listener()
        gen = generation or generator.settings
        self.gen_settings = gen.model_copy(update={"logprobs": True}) if scorer.needs_logprobs else gen
        self._requests = requests if requests is not None else asyncio.Semaphore(settings.concurrency)
        self._clock = itertools.count(1)
        self.short_choices = 0  # samples asked for that a server did not return (asked for again)
        self.failed_requests = 0  # requests that failed every retry (logged as "failed" events)

    async def run_episode(self, episode: Episode, problem: LiveProblem, prompt: Prompt, *,
                          limits: EpisodeLimits | None = None, earlier: ProblemLog | None = None) -> EpisodeRun:
        """Sample ``prompt`` until ``episode`` (started by the caller) stops, a limit is reached, or sampling
        gives up after ``settings.max_failures`` failed requests.

        ``problem`` names the records (``problem.id``) and is what the scorer reads as the
        question. ``earlier`` continues a problem an earlier session began: its samples, which
        ``episode`` has already observed, and its events come first and new samples are
        numbered after them. When a limit ends sampling, or the call is cancelled, every
        request under way is cancelled (its stream closed) after what it cost was logged. A
        token cap bounds the completion tokens by ``max_total_tokens`` plus one sample's
        ``max_tokens`` (that single sample is launched when the rest of the budget is
        smaller), plus attempts retried after a failure; samples already fully generated when
        the cap is reached are still scored and observed. Rejected requests
        (:class:`~optscale.live.types.RequestRejected`) and scorer failures propagate.
        """
        limits = limits or EpisodeLimits()
        samples = [_lean(r) for r in earlier.samples] if earlier else []
        events = list(earlier.events) if earlier else []
        cut = limits.reached(_spent(samples, events))
        if cut is not None:
            return EpisodeRun(samples, events, cut)
        return await self._sample(problem, prompt, episode, earlier.next_index if earlier else 0, samples, events,
                                  limits)

    def _short_choices(self, problem: LiveProblem, asked: int, got: int) -> None:
        self.short_choices += asked - got
        (log.warning if self.short_choices == asked - got else log.info)(
            "problem %r: asked the server for %d choices, got %d; asking again for the rest (%d so far)",
            problem.id, asked, got, self.short_choices)

    # -- one request ---------------------------------------------------------------------
    def _seeded(self, problem: LiveProblem, index: int):
        """Per-sample seed from the run's seed, so a re-drawn sample is the same sample."""
        base = self.gen_settings.seed
        if base is None:
            return self.gen_settings
        return self.gen_settings.model_copy(update={"seed": sample_seed(base, problem.id, index)})

    async def _request(self, problem: LiveProblem, prompt: Prompt, slot: _Slot) -> None:
        try:
            async with self._requests:
                slot.stage = "generating"
                slot.completions = await self.generator.generate(
                    prompt, n=len(slot.indices), meter=slot.meter, settings=self._seeded(problem, slot.indices[0]))
            slot.stage = "scoring"
            slot.scores = await self.scorer.score([
                ScoreRequest(problem.question, c.text, tuple(c.logprobs) if c.logprobs else None)
                for c in slot.completions])
        finally:
            slot.done_at = next(self._clock)

    async def _log(self, record: dict[str, Any], into: list[dict[str, Any]]) -> None:
        """Store ``record`` durably, then keep it in memory (without its text when the store keeps it)."""
        if self.store is not None:
            await self.store.append(record)
        self.listener.on_record(record)
        into.append(_lean(record) if self.store is not None else record)

    def _sample_record(self, problem: LiveProblem, index: int, c: Completion, score: Score, first: bool) -> dict:
        answer = extract_answer(c.text, self.settings.answer_style) if c.text else None
        value, flag = score.value, score.flag
        if flag is None and answer is None and self.settings.zero_unanswered:
            value, flag = 0.0, "no_answer"
        if flag is None and c.usage_invalid:
            flag = "usage_invalid"
        return {
            "type": "sample", "id": f"{problem.id}#{index}", "problem": problem.id, "index": index,
            "score": value, "raw_score": score.value, "flag": flag, "answer": answer,
            "step_scores": list(score.steps) if score.steps is not None else None,
            "tokens": c.tokens, "tokens_source": c.tokens_source,
            # The prompt (and earlier failed attempts) were paid once per request, not per choice.
            "wasted_tokens": c.wasted_tokens if first else 0,
            "prompt_tokens": c.prompt_tokens if first or c.prompt_tokens is None else 0,
            "finish_reason": c.finish_reason, "endpoint": c.endpoint, "attempts": c.attempts,
            "latency_s": round(c.latency_s, 3), "usage_invalid": c.usage_invalid, "scorer_tokens": score.tokens,
            "text": c.text,
        }

    def _event(self, kind: str, problem: LiveProblem, slot: _Slot, index: int, tokens: int,
               **extra: Any) -> dict[str, Any]:
        """A cancellation or failure, with how its tokens were counted (unknown without streaming)."""
        if slot.completions:
            source = slot.completions[0].tokens_source
        elif not self.gen_settings.stream:
            source = "unknown"
        else:
            source = "chunks" if slot.meter.by_chunks else "logprobs"
        return {"type": kind, "id": f"{problem.id}#{index}", "problem": problem.id, "index": index,
                "tokens": tokens, "tokens_source": source, **extra}

    async def _cancel(self, problem: LiveProblem, slots: dict[asyncio.Task, _Slot], events: list[dict],
                      generating_only: bool = False) -> None:
        """Cancel every request still under way (or only those that may still generate tokens) and log
        what each had cost."""
        chosen = {t: s for t, s in slots.items()
                  if not generating_only or (s.stage != "scoring" and not self._generated_all(s))}
        for task in chosen:
            task.cancel()
        await asyncio.gather(*chosen, return_exceptions=True)
        for slot in sorted(chosen.values(), key=lambda s: s.indices[0]):
            if slot.stage != "queued":
                event = self._event("cancelled", problem, slot, slot.indices[0], slot.cost(), stage=slot.stage)
                await self._log(event, events)
        for task in chosen:
            del slots[task]

    # -- one episode ---------------------------------------------------------------------
    async def _sample(self, problem: LiveProblem, prompt: Prompt, episode: Episode, next_index: int,
                      samples: list[dict], events: list[dict], limits: EpisodeLimits) -> EpisodeRun:
        """Draw samples until the episode stops or a limit ends sampling (:meth:`run_episode`)."""
        slots: dict[asyncio.Task, _Slot] = {}
        spare: list[int] = []  # indices a request came back without, asked for again
        failures = 0
        stopped = False
        cut = None
        cancelled = asyncio.ensure_future(limits.cancel.wait()) if limits.cancel is not None else None
        try:
            while not stopped:
                under_way = sum(len(s.indices) for s in slots.values())
                want = min(episode.planned - len(samples), self.settings.in_flight) - under_way
                if not slots:
                    want = max(want, 1)
                want = self._affordable(want, samples, events, slots, limits)
                while want > 0:
                    k = min(want, self.settings.n_per_request)
                    indices, spare = spare[:k], spare[k:]
                    fresh = k - len(indices)
                    slot = _Slot(indices + list(range(next_index, next_index + fresh)))
                    next_index += fresh
                    want -= k
                    slots[asyncio.create_task(self._request(problem, prompt, slot))] = slot
                done, _ = await asyncio.wait([*slots, *([cancelled] if cancelled else [])], timeout=limits.wait(),
                                             return_when=asyncio.FIRST_COMPLETED)
                done.discard(cancelled)
                last_failure = None
                for task in sorted(done, key=lambda t: slots[t].done_at):
                    slot = slots.pop(task)
                    exc = task.exception()
                    if isinstance(exc, RequestFailed):
                        failures += 1
                        self.failed_requests += 1
                        last_failure = exc
                        log.warning("problem %r: a request failed (%s)", problem.id, exc)
                        event = self._event("failed", problem, slot, slot.indices[0], slot.cost(), error=str(exc),
                                            attempts=exc.attempts)
                        await self._log(event, events)
                        continue
                    if exc is not None:
                        raise exc
                    assert slot.completions is not None and slot.scores is not None
                    missing = slot.indices[len(slot.completions):]
                    if missing:
                        spare = sorted(spare + missing)
                        self._short_choices(problem, len(slot.indices), len(slot.completions))
                    got = slot.indices[:len(slot.completions)]
                    for k, (index, c, score) in enumerate(zip(got, slot.completions, slot.scores, strict=True)):
                        if stopped:
                            tokens = c.tokens + (slot.meter.wasted if k == 0 else 0)
                            await self._log(self._event("cancelled", problem, slot, index, tokens,
                                                        stage="after_stop"), events)
                            continue
                        record = self._sample_record(problem, index, c, score, first=k == 0)
                        await self._log(record, samples)
                        decision = episode.observe(Sample(record["score"], record["answer"], record["tokens"]))
                        stopped = decision is Decision.STOP
                if last_failure is not None and failures >= self.settings.max_failures and not stopped:
                    log.warning("problem %r gives up for this session: %d requests failed; last: %s", problem.id,
                                failures, last_failure)
                    return EpisodeRun(samples, events, None,
                                      f"problem {problem.id!r}: {failures} requests failed; last: {last_failure}",
                                      last_failure)
                if not stopped:
                    cut = limits.reached(_spent(samples, events) + sum(s.cost() for s in slots.values()))
                    if cut == "max_total_tokens" and slots:
                        # stop generating; samples already generated (or fully streamed) are still scored and
                        # given to the policy
                        await self._cancel(problem, slots, events, generating_only=True)
                    if cut is not None and (cut != "max_total_tokens" or not slots):
                        stopped = True
                    else:
                        cut = None
        finally:
            if cancelled is not None:
                cancelled.cancel()
            await self._cancel(problem, slots, events)
        return EpisodeRun(samples, events, cut)

    def _affordable(self, want: int, samples: list[dict], events: list[dict], slots: dict[asyncio.Task, _Slot],
                    limits: EpisodeLimits) -> int:
        """How many of ``want`` new samples fit in ``max_total_tokens`` if every sample under way and new
        one ran to the ``max_tokens`` it may generate; one at least when nothing is under way."""
        per_sample = self.gen_settings.max_tokens
        if limits.max_total_tokens is None or per_sample is None or want <= 0:
            return want
        reserved = sum(max(s.cost(), per_sample * len(s.indices)) for s in slots.values())
        fits = max(0, (limits.max_total_tokens - _spent(samples, events) - reserved) // per_sample)
        return min(want, fits) if slots else max(1, min(want, fits))

    def _generated_all(self, slot: _Slot) -> bool:
        """Whether a request has streamed every token its ``max_tokens`` allows: it has only its end
        left to send, so cancelling it at the token cap would throw away a whole sample for nothing.
        (Exactly: a server that streams past ``max_tokens`` ignores it, and is cut.)"""
        per_sample = self.gen_settings.max_tokens
        return per_sample is not None and slot.meter.streamed == per_sample * len(slot.indices)


async def supervise(tasks: list[asyncio.Task]) -> None:
    """Wait for all tasks; on the first error cancel the others (they log their cancellations) and raise it."""
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@dataclass
class _Run:
    """What the problems of one :func:`sample_problems` call share besides the sampler."""

    sampler: EpisodeSampler
    policy: Policy
    template: PromptTemplate
    state: RunState
    problems: asyncio.Semaphore
    describe: str

    async def problem(self, problem: LiveProblem) -> ProblemResult:
        sampler = self.sampler
        log = self.state.log(problem.id)
        episode = self.policy.start(Problem(id=problem.id, question=problem.question))
        stopped = False
        for record in log.samples:
            if stopped:
                raise InputError(f"problem {problem.id!r} has samples logged after its policy stopped; "
                                 "was the run folder written with other settings?", "out")
            stopped = episode.observe(Sample(record["score"], record["answer"], record["tokens"])) is Decision.STOP
        samples, events = [_lean(r) for r in log.samples], list(log.events)
        if problem.id in self.state.finished:
            result = _result(samples, events, self.state.finished[problem.id])
            sampler.listener.on_problem(result)
            return result
        if not stopped:
            async with self.problems:
                run = await sampler.run_episode(episode, problem, self.template.render(problem.question), earlier=log)
            samples, events = run.samples, run.events
            if run.error is not None:
                result = ProblemResult(problem.id, None, None, len(samples), run.spent(), "unfinished",
                                       samples=samples, events=events, error=run.error)
                sampler.listener.on_problem(result)
                return result
        outcome = episode.result()
        verdict = None if problem.answer is None else await grade_async(problem.answer, outcome.answer,
                                                                            where=f"problem {problem.id!r}")
        summary = summarize(problem, samples, events, outcome, self.describe, verdict)
        assert sampler.store is not None
        await sampler.store.finish(summary)
        result = _result(samples, events, summary)
        sampler.listener.on_problem(result)
        return result


def _result(samples: list[dict], events: list[dict], summary: dict) -> ProblemResult:
    return ProblemResult(
        id=summary["id"], answer=summary["answer"], correct=summary["correct"], n_samples=summary["n_samples"],
        tokens=summary["tokens"], stop_reason=summary["stop_reason"], estimates=summary["estimates"],
        chosen=summary["chosen"], samples=samples, events=events, summary=summary)


async def sample_problems(
    problems: Sequence[LiveProblem],
    generator: OpenAIGenerator,
    scorer: Scorer,
    policy: Policy,
    *,
    template: PromptTemplate | None = None,
    settings: SamplerSettings | None = None,
    store: Store | None = None,
    listener: Listener | None = None,
) -> list[ProblemResult]:
    """Sample every problem adaptively under ``policy``; results in the order of ``problems``.

    Each problem is one episode of an :class:`EpisodeSampler` (the scorer is batched across
    problems). With a :class:`~optscale.live.runs.RunStore` the run is durable and resumable:
    problems it has finished are returned from the log, unfinished ones continue where they
    stopped. Problems that give up after repeated request failures come back with ``error`` set.
    """
    settings = settings or SamplerSettings()
    store = store if store is not None else MemoryStore()
    sampler = EpisodeSampler(generator, BatchingScorer(scorer), settings, store=store, listener=listener)
    run = _Run(sampler, policy, template or PromptTemplate(), store.load(),
               asyncio.Semaphore(settings.problems_in_flight or settings.concurrency),
               getattr(policy, "describe", lambda: policy.name)())
    if any(p.answer is not None for p in problems):
        await grade_async("1", "1")  # starts the grader now rather than in the middle of streaming
    sampler.listener.on_start(len(problems))
    tasks = [asyncio.create_task(run.problem(p)) for p in problems]
    try:
        await supervise(tasks)
    finally:
        await sampler.scorer.aclose()
    return [task.result() for task in tasks]


async def sample_episode(
    episode: Episode,
    prompt: Prompt,
    question: str,
    generator: OpenAIGenerator,
    scorer: Scorer,
    *,
    id: str = "episode",
    settings: SamplerSettings | None = None,
    generation: GenerationSettings | None = None,
    requests: AbstractAsyncContextManager | None = None,
    deadline: float | None = None,
    max_total_tokens: int | None = None,
    listener: Listener | None = None,
) -> EpisodeRun:
    """One episode on a sampler of its own: :meth:`EpisodeSampler.run_episode` with these limits (the
    spelling of earlier versions, kept)."""
    sampler = EpisodeSampler(generator, scorer, settings, listener=listener, generation=generation, requests=requests)
    return await sampler.run_episode(episode, LiveProblem(id, question), prompt,
                                     limits=EpisodeLimits(deadline, max_total_tokens))
