"""Shadow sampling (``--shadow-share``): after a client has its answer, sample its episode on to ``n_max``.

For a share of requests (a hash of the request id, so the choice is the same on every replica
and a test can force it with share 1) the episode goes on in the background once the client's
answer is sent: a fixed-``n_max`` episode under the same selection rule observes the samples
the client paid for (they are reused, never drawn again) and :meth:`~.episodes.Service.sample_on`
draws the rest. What it finds is counted (metrics, :mod:`.savings`) and, with
``--traffic-dir``, appended to the traffic files (:mod:`.traffic`) as one pool line.

It never delays a client: its upstream requests take a slot of the shared ``max_in_flight``
limiter only when one is free and no client request waits (:meth:`~.limits.FairLimiter.background`),
at most ``shadow_in_flight`` at once; when a client request has to wait, the shadow episodes
holding slots are dropped (reason ``load``). At most ``shadow_in_flight`` shadow episodes
run; ``shadow_queue`` more wait (beyond it the oldest is dropped, ``queue_full``). A
shutdown drops them all (``shutdown``) before the clients' drain begins.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import logging
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..answers import normalize_answer
from ..compose import build_policy
from ..live.runs import ProblemLog
from ..live.types import GenerationSettings, Prompt
from ..policies import Decision, Problem, Sample
from ..policies.learned import StoppingTable, file_sha256
from ..policies.selection import Selection
from .episodes import EpisodeResult, Service
from .options import Options
from .responses import json_safe
from .savings import SavingsBackend
from .tables import TableSet
from .traffic import TrafficWriter

__all__ = ["ShadowRunner", "ShadowJob", "chosen_for_shadow", "messages_sha256"]

log = logging.getLogger("optscale.serve")


def chosen_for_shadow(request_id: str, share: float) -> bool:
    """Whether a request is sampled on in the shadow: its id's hash, as a number in [0, 1), is below ``share``."""
    if share <= 0:
        return False
    return int.from_bytes(hashlib.sha256(request_id.encode()).digest()[:8], "big") / 2.0 ** 64 < share


def messages_sha256(prompt: Prompt) -> str:
    """sha256 hex of the canonical JSON (sorted keys, no spaces, UTF-8) of the messages, or of the prompt text."""
    value: Any = [dict(m) for m in prompt.messages] if prompt.messages is not None else prompt.text
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":"),
                                     ensure_ascii=False).encode()).hexdigest()


@dataclass
class ShadowJob:
    """A client's finished episode, to be sampled on."""

    kind: str
    prompt: Prompt
    question: str
    options: Options
    generation: GenerationSettings
    request_id: str
    result: EpisodeResult
    created: float


@dataclass
class _Held:
    """One shadow episode's share of the limiter: slots held now; why it was dropped; whether it is writing."""

    slots: int = 0
    dropped: str | None = None
    finishing: bool = False


class _Requests:
    """The upstream requests of one shadow episode: ``shadow_in_flight`` for all of them, then a background
    slot of the limiter (counted, so that a client that waits can have it back)."""

    def __init__(self, runner: ShadowRunner, held: _Held):
        self.runner, self.held = runner, held
        self.lane = runner.service.limiter.background()

    async def __aenter__(self) -> None:
        await self.runner.requests.acquire()
        try:
            await self.lane.__aenter__()
        except BaseException:
            self.runner.requests.release()
            raise
        self.held.slots += 1

    async def __aexit__(self, *exc: object) -> None:
        self.held.slots -= 1
        await self.lane.__aexit__(*exc)
        self.runner.requests.release()


class ShadowRunner:
    """Queues and runs the shadow episodes of one app (see the module)."""

    def __init__(self, service: Service, savings: SavingsBackend, tables: TableSet,
                 writer: TrafficWriter | None = None):
        self.service, self.config, self.metrics = service, service.config, service.metrics
        self.savings, self.tables, self.writer = savings, tables, writer
        self.requests = asyncio.Semaphore(self.config.shadow_in_flight)
        self.queue: collections.deque[ShadowJob] = collections.deque()
        self.running: dict[asyncio.Task, _Held] = {}
        self.closed = False
        self._file_sha: weakref.WeakKeyDictionary[StoppingTable, str | None] = weakref.WeakKeyDictionary()
        service.limiter.on_wait = self.yield_to_clients

    def offer(self, kind: str, prompt: Prompt, question: str, options: Options, generation: GenerationSettings,
              request_id: str, result: EpisodeResult):
        """What to run once the client has its answer (an async callable for a response's background), or None
        when this request is not sampled on: not in the share, or its episode was ended by a limit (a deadline,
        a token cap, failures) rather than by its policy."""
        if self.closed or not chosen_for_shadow(request_id, self.config.shadow_share):
            return None
        if result.stop_reason != result.outcome.stop_reason:
            return None
        job = ShadowJob(kind, prompt, question, options, generation, request_id, result, time.time())

        async def submit() -> None:
            self.submit(job)

        return submit

    def submit(self, job: ShadowJob) -> None:
        if self.closed:
            return
        if len(self.queue) >= self.config.shadow_queue:
            self.queue.popleft()
            self.metrics.shadow_dropped.labels(reason="queue_full").inc()
        self.queue.append(job)
        self._pump()

    def _pump(self) -> None:
        while self.queue and len(self.running) < self.config.shadow_in_flight and not self.closed:
            held = _Held()
            task = asyncio.create_task(self._run(self.queue.popleft(), held))
            self.running[task] = held
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task) -> None:
        self.running.pop(task, None)
        self._pump()

    def yield_to_clients(self) -> None:
        """A client request waits for an upstream slot: drop the shadow episodes that hold one."""
        for task, held in list(self.running.items()):
            if held.slots > 0 and not held.finishing and not task.done():
                held.dropped = "load"
                task.cancel()

    def cancel_all(self) -> None:
        """Drop every shadow episode, queued or running (a shutdown); none is started afterwards."""
        self.closed = True
        for _ in self.queue:
            self.metrics.shadow_dropped.labels(reason="shutdown").inc()
        self.queue.clear()
        for task, held in self.running.items():
            if not held.finishing:
                held.dropped = held.dropped or "shutdown"
                task.cancel()

    async def aclose(self) -> None:
        self.cancel_all()
        await asyncio.gather(*self.running, return_exceptions=True)
        if self.writer is not None:
            await self.writer.aclose()

    # -- one shadow episode ----------------------------------------------------------------
    async def _run(self, job: ShadowJob, held: _Held) -> None:
        try:
            record = await self._sample(job, held)
        except asyncio.CancelledError:
            self.metrics.shadow_dropped.labels(reason=held.dropped or "shutdown").inc()
            return
        except Exception as exc:  # an upstream or scorer failure: the client had its answer; log and count
            log.warning("shadow episode of request %s failed: %s", job.request_id,
                        self.service.redact(f"{type(exc).__name__}: {exc}")[:500])
            record = None
        if record is None:
            self.metrics.shadow_dropped.labels(reason="failed").inc()
            return
        held.finishing = True
        await self._count(record)
        if self.writer is not None:
            await self.writer.append(record)

    async def _sample(self, job: ShadowJob, held: _Held) -> dict[str, Any] | None:
        """The episode sampled on to ``n_max`` as a traffic record, or None when sampling gave up."""
        result, policy = job.result, job.options.policy
        rule = Selection(policy.select).value
        full = build_policy("bon", policy.n_max, {"select": rule}).start(Problem(job.request_id, job.question))
        earlier = ProblemLog()
        for record in [*result.samples, *result.events]:
            earlier.add(record)
        stopped = False
        for s in result.samples:
            stopped = full.observe(Sample(s["score"], s["answer"], int(s["tokens"]))) is Decision.STOP
        samples = list(result.samples)
        if not stopped:
            run = await self.service.sample_on(job.kind, job.prompt, job.question, full, earlier, job.generation,
                                               job.request_id, _Requests(self, held), job.options.deadline_s)
            if run.error is not None or run.cut is not None or len(run.samples) < policy.n_max:
                log.info("shadow episode of request %s ended before n_max: %s", job.request_id,
                         run.error or run.cut or "too few samples")
                return None
            samples += run.samples[len(samples):]
        return self._record(job, samples, full.result().answer)

    def _record(self, job: ShadowJob, samples: list[dict[str, Any]], full_answer: str | None) -> dict[str, Any]:
        """The pool line of a shadow episode (docs: the traffic format)."""
        options, store = job.options, self.config.traffic_store_prompts
        table, table_sha = self._table(options)
        out: dict[str, Any] = {"id": job.request_id, "answer": None}
        if store:
            out["question"] = job.question
        out["messages_sha256"] = messages_sha256(job.prompt)
        out["samples"] = [{"answer": s["answer"], "score": s["score"], "tokens": int(s["tokens"]),
                           **({"text": s.get("text")} if store else {})} for s in samples]
        out["optscale"] = {
            "policy": options.name, "settings": options.settings, "table": table, "table_sha256": table_sha,
            "n_max": options.policy.n_max, "stopped_at": len(job.result.samples),
            "early_answer": job.result.outcome.answer, "full_answer": full_answer,
            "select": Selection(options.policy.select).value, "model": self.config.model, "created": job.created,
        }
        return json_safe(out)

    def _table(self, options: Options) -> tuple[str | None, str | None]:
        """The stopping table the policy used: its file name and the sha256 of its bytes (None without one)."""
        table = getattr(options.policy, "table", None)
        if not isinstance(table, StoppingTable):
            return None, None
        loaded = self.tables.identify(table)
        if loaded is not None:
            return loaded.name, loaded.sha256
        if table not in self._file_sha:  # a server-side table (--set table=FILE), read once at start
            try:
                self._file_sha[table] = file_sha256(table.path) if table.path else None
            except OSError:
                self._file_sha[table] = None
        return (Path(table.path).name if table.path else None), self._file_sha[table]

    async def _count(self, record: dict[str, Any]) -> None:
        meta = record["optscale"]
        tokens = [s["tokens"] for s in record["samples"]]
        early, full = sum(tokens[:meta["stopped_at"]]), sum(tokens)
        agreed = normalize_answer(meta["early_answer"]) == normalize_answer(meta["full_answer"])
        labels = {"model": self.config.model, "policy": meta["policy"], "table": meta["table"] or ""}
        self.metrics.shadow_episodes.labels(**labels).inc()
        if agreed:
            self.metrics.shadow_agreement.labels(**labels).inc()
        self.metrics.shadow_tokens.labels(**labels, kind="early").inc(early)
        self.metrics.shadow_tokens.labels(**labels, kind="full").inc(full)
        await self.savings.record(meta["policy"], meta["table"], agreed, early, full)
