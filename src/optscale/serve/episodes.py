"""One episode per request on the live engine: generator, scorer, sampler and policy, no second copy.

:class:`Service` holds what requests share (the upstream clients, one batching scorer, the
fair request limiter, the episode gate, metrics) and runs each request's episode with
:meth:`~optscale.live.sampler.EpisodeSampler.run_episode`, the loop ``optscale run`` uses too.
It accounts every upstream generation as it happens (through the sampler's listener), so the
tokens of a request whose client left mid-episode are counted too. :meth:`Service.sample_on`
continues a finished episode in the background (shadow sampling, :mod:`.shadow`): the samples
the client paid for are reused, never drawn again, and the new ones are counted apart.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from ..answers import normalize_answer
from ..errors import InputError, OptscaleError
from ..fit import FitFlag
from ..live.openai import MODELS_BODY_LIMIT, OpenAIGenerator
from ..live.datasets import LiveProblem
from ..live.runs import ProblemLog
from ..live.sampler import EpisodeLimits, EpisodeRun, EpisodeSampler, Listener, plain
from ..live.scorers import BatchingScorer, Score, Scorer, ScorerContext, ScoreRequest, build_scorer
from ..live.secrets import Redactor
from ..live.transport import read_body
from ..live.types import GenerationSettings, Prompt, RequestFailed, RequestRejected
from ..policies import Episode, Outcome, Problem
from .errors import ApiError
from .limits import EpisodeGate, FairLimiter
from .metrics import Metrics
from .otel import Tracing
from .schemas import Options
from .settings import ServeConfig

__all__ = ["Service", "EpisodeResult", "estimates", "plain", "usage_of"]

log = logging.getLogger("optscale.serve")
_URL = re.compile(r"(?:https?://|\b(?:127\.0\.0\.1|localhost):\d)[^\s'\"(),]*")


@dataclass
class EpisodeResult:
    """A finished episode: its samples (texts included), events, the policy's outcome and the accounts."""

    options: Options
    samples: list[dict[str, Any]]
    events: list[dict[str, Any]]
    outcome: Outcome
    stop_reason: str
    chosen: int  # index into samples of the answer returned first
    timings: dict[str, float]
    prompt_tokens: int | None
    scorer_tokens: int | None = None

    @property
    def n_launched(self) -> int:
        return len(self.samples) + len(self.events)

    def breakdown(self) -> dict[str, int | None]:
        """Completion tokens by fate: used samples, cancelled ones, and failed attempts (those retried
        before a sample succeeded included: a sample's ``wasted_tokens``)."""
        used = sum(int(s["tokens"]) for s in self.samples)
        cancelled = sum(int(e["tokens"]) for e in self.events if e["type"] == "cancelled")
        failed = sum(int(e["tokens"]) for e in self.events if e["type"] == "failed") + sum(
            int(s.get("wasted_tokens") or 0) for s in self.samples)
        return {"generation_completion_tokens": used, "cancelled_completion_tokens": cancelled,
                "failed_completion_tokens": failed, "prompt_tokens": self.prompt_tokens,
                "scorer_tokens": self.scorer_tokens}

    def usage_unknown(self) -> list[str]:
        """The fields of ``usage`` whose value is not known (reported as 0 because the schema wants an integer)."""
        return ["prompt_tokens"] if self.prompt_tokens is None else []

    def usage(self) -> dict[str, int]:
        return usage_of(self.samples + self.events, self.prompt_tokens)

    def ranked(self, n: int) -> list[int]:
        """The returned samples: the chosen one, then the best-scored samples with other answers, ``n`` at most."""
        order = [self.chosen] + sorted((i for i in range(len(self.samples)) if i != self.chosen),
                                       key=lambda i: -float(self.samples[i]["score"]))
        out, seen = [], set()
        for i in order:
            s = self.samples[i]
            key = normalize_answer(s.get("answer")) or ("text", s.get("text"))
            if key in seen:
                continue
            seen.add(key)
            out.append(i)
            if len(out) == n:
                break
        return out


def usage_of(records: Sequence[dict[str, Any]], prompt_tokens: int | None) -> dict[str, int]:
    """OpenAI's ``usage`` of an episode's logged records: every completion token generated (cancelled and
    failed ones, and retried attempts, included) and the prompt (0 when unknown: the schema wants a number)."""
    completion = sum(int(r["tokens"]) + int(r.get("wasted_tokens") or 0) for r in records)
    prompt = prompt_tokens or 0
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class _Accounting(Listener):
    """Counts every upstream generation in the metrics as it is logged, and keeps the records."""

    def __init__(self, service: Service, labels: dict[str, str], span: Any):
        self.service, self.labels, self.span = service, labels, span
        self.records: list[dict[str, Any]] = []

    def on_record(self, record: dict[str, Any]) -> None:
        m, model = self.service.metrics, self.labels["model"]
        self.records.append(record)
        m.launched.labels(**self.labels).inc()
        kind = {"sample": "completion", "cancelled": "cancelled", "failed": "failed"}[record["type"]]
        m.tokens.labels(model=model, kind=kind).inc(int(record["tokens"]))
        if record.get("wasted_tokens"):  # attempts that failed before this sample succeeded
            m.tokens.labels(model=model, kind="failed").inc(int(record["wasted_tokens"]))
        if record["type"] == "cancelled":
            m.cancelled.labels(**self.labels).inc()
        self.service.tracing.sample(self.span, record)

    def usage(self) -> dict[str, int]:
        """What the episode has cost so far (for an error answer)."""
        return usage_of(self.records, self.prompt_tokens())

    def prompt_tokens(self) -> int | None:
        """The prompt's size (reported by the upstream) times the upstream requests made for it.

        The proxy asks one sample per request; a sample's request may have been attempted
        several times (its ``attempts``), a failed one as often as its ``attempts`` say (fewer than
        ``retries + 1`` when the upstream asked to wait longer than ``backoff_max``), a cancelled
        one at least once. Cancelled streams report no usage, so the size comes from those that did.
        """
        sizes = [int(r["prompt_tokens"]) for r in self.records if r.get("prompt_tokens")]
        return max(sizes) * sum(self._attempts(r) for r in self.records) if sizes else None

    def _attempts(self, record: dict[str, Any]) -> int:
        if record["type"] == "sample":
            return int(record.get("attempts") or 1)
        if record["type"] == "failed":
            return int(record.get("attempts") or self.service.config.client.retries + 1)
        return 1


class _ShadowAccounting(Listener):
    """Counts the upstream generations of shadow sampling (``optscale_upstream_tokens_total{kind="shadow"}``)."""

    def __init__(self, service: Service):
        self.service = service

    def on_record(self, record: dict[str, Any]) -> None:
        tokens = int(record["tokens"]) + int(record.get("wasted_tokens") or 0)
        self.service.metrics.tokens.labels(model=self.service.config.model, kind="shadow").inc(tokens)


class _CountedScorer:
    """The shared scorer as one episode calls it: each call counted in the metrics and traced.

    It adds up the tokens the scorer's model spent for this episode (``tokens``: None as soon
    as one score's cost is unknown, since a sum with a hole in it would be a lie).
    """

    def __init__(self, service: Service, model: str):
        self.inner, self.service, self.model = service.scorer, service, model
        self.kind, self.needs_logprobs = self.inner.kind, self.inner.needs_logprobs
        self.tokens: int | None = 0

    async def check(self) -> None:
        await self.inner.check()

    async def score(self, items: Sequence[ScoreRequest]) -> list[Score]:
        counter = self.service.metrics.scorer
        with self.service.tracing.scorer_call(self.kind, len(items)) as span:
            try:
                scores = await self.inner.score(items)
            except Exception:
                counter.labels(model=self.model, status="error").inc(len(items))
                raise
            spent = [s.tokens for s in scores]
            known = None if None in spent else sum(spent)
            self.service.tracing.scorer_result(span, scores, known)
        for s in scores:
            counter.labels(model=self.model, status="flagged" if s.flag else "ok").inc()
        self.tokens = None if known is None or self.tokens is None else self.tokens + known
        if known:
            self.service.metrics.tokens.labels(model=self.model, kind="scorer").inc(known)
        return scores


class Service:
    """What every request shares; :meth:`run` samples one request's episode."""

    def __init__(self, config: ServeConfig, transport: httpx.AsyncBaseTransport | None = None,
                 tracer_provider: Any = None):
        self.config = config
        client = config.client
        if "max_connections" not in client.model_fields_set:
            client = client.model_copy(update={"max_connections": config.max_in_flight + 8})
        self.generators = {kind: OpenAIGenerator(config.upstream, config.model, config.generation, kind=kind,
                                                 client=client, transport=transport)
                           for kind in ("chat", "completion")}
        context = ScorerContext(base_urls=tuple(config.upstream), model=config.model,
                                client=config.client.model_copy(update={"api_key": None}))
        self.raw_scorer: Scorer = build_scorer(config.scorer, config.scorer_config(), context)
        self.scorer = BatchingScorer(self.raw_scorer)
        self.limiter = FairLimiter(config.max_in_flight)
        self.gate = EpisodeGate(config.max_episodes)
        # requests on the wire to the upstream, not those waiting for a connection (client.max_connections)
        self.metrics = Metrics(lambda: sum(g.transport.in_flight for g in self.generators.values()))
        self.tracing = Tracing(tracer_provider)
        self.redact = Redactor(config.secrets())
        self.sampler_settings = config.sampler_settings()
        self.ready = False
        self.ready_error = "the upstream and the scorer have not been checked yet"
        self.checked_at = float("-inf")  # when the last check (passed or failed) ended
        self._checking = asyncio.Lock()
        self._models: tuple[float, list[str]] = (float("-inf"), [])
        # Episode starts (a policy's prior prediction may take a while) run here, off the event loop,
        # one at a time: a predictor need not be thread-safe.
        self._starts = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="optscale-episode-start")

    async def aclose(self) -> None:
        await self.scorer.aclose()
        await self.raw_scorer.aclose()
        for generator in self.generators.values():
            await generator.aclose()
        self._starts.shutdown(wait=False, cancel_futures=True)

    def public(self, text: str) -> str:
        """``text`` for a client: secrets masked, and no server URL (the upstream's or the scorer's).

        Where the server's upstreams are is the operator's business; the log has the full text.
        """
        return _URL.sub("upstream", self.redact(text))

    # -- readiness -----------------------------------------------------------------------
    async def check(self) -> bool:
        """A full check (a tiny generation, the scorer's own check) until one passes; afterwards the
        upstreams' ``/models``; a failed check makes the next one full again."""
        try:
            if not self.ready:
                await self.generators["chat"].check(need_logprobs=self.scorer.needs_logprobs, why="scorer")
                await self.scorer.check()
            else:
                await self.generators["chat"].check_servers()
        except (OptscaleError, httpx.HTTPError, OSError) as exc:
            reason = self.redact(str(exc))
            self.ready, self.ready_error, self.checked_at = False, self.public(reason)[:500], time.monotonic()
            log.warning("not ready: %s", reason[:500])
            return False
        self.ready, self.checked_at = True, time.monotonic()
        return True

    async def refresh(self) -> bool:
        """Readiness, checked again when the last check is older than ``ready_ttl_s`` (passed or failed:
        a server that was down is tried again, at most that often); one check at a time."""
        if time.monotonic() - self.checked_at > self.config.ready_ttl_s:
            async with self._checking:
                if time.monotonic() - self.checked_at > self.config.ready_ttl_s:
                    await self.check()
        return self.ready

    async def ensure_ready(self) -> None:
        if not await self.refresh():
            raise ApiError(503, f"not ready: {self.ready_error}", None, "not_ready",
                           {"Retry-After": str(self.config.retry_after_s)})

    async def upstream_models(self) -> list[str] | None:
        """The models the upstreams list on ``/models`` (kept for ``ready_ttl_s``), None when that fails."""
        at, models = self._models
        if time.monotonic() - at <= self.config.ready_ttl_s:
            return models
        t = self.generators["chat"].transport
        found: list[str] = []
        try:
            for endpoint in t.pool.endpoints:
                async with t.http.stream("GET", f"{endpoint.url}/models") as response:
                    raw = await read_body(response, MODELS_BODY_LIMIT, truncate=True)
                response.raise_for_status()
                for m in json.loads(raw).get("data", []):
                    if isinstance(m, dict) and isinstance(m.get("id"), str) and m["id"] not in found:
                        found.append(m["id"])
        except (httpx.HTTPError, OSError, ValueError, AttributeError) as exc:
            log.warning("cannot list the upstream's models (%s); listing the configured model only",
                        self.redact(f"{type(exc).__name__}: {exc}")[:300])
            return None
        self._models = (time.monotonic(), found)
        return found

    # -- one episode -----------------------------------------------------------------------
    def admit(self) -> None:
        if not self.gate.try_enter():
            raise ApiError(429, f"the server is sampling {self.config.max_episodes} requests (max_episodes); retry "
                           "shortly", None, "too_many_episodes", {"Retry-After": str(self.config.retry_after_s)})

    async def start(self, options: Options, problem: Problem, question_place: str) -> Episode:
        """The policy's episode for ``problem``, started off the event loop (a prior prediction takes a
        while); a question the policy cannot work with is the client's error (400 at ``question_place``)."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._starts, options.policy.start, problem)
        except InputError as exc:
            raise ApiError(400, f"{question_place}: policy {options.name!r} cannot start on this question: "
                           f"{self.public(exc.detail)}", question_place, "invalid_request") from None

    async def run(self, kind: str, prompt: Prompt, question: str, options: Options, generation: GenerationSettings,
                  request_id: str, span: Any = None, question_place: str = "question") -> EpisodeResult:
        """Sample one request (admitted by :meth:`admit`; the caller leaves the gate)."""
        accounting = _Accounting(self, {"model": self.config.model, "policy": options.name}, span)
        scorer = _CountedScorer(self, self.config.model)
        start = time.monotonic()
        episode = await self.start(options, Problem(id=request_id, question=question), question_place)
        try:
            return await self._sample(kind, prompt, question, options, generation, request_id, episode, accounting,
                                      scorer, start)
        except ApiError as exc:  # a failed episode still says what it cost
            exc.usage = accounting.usage()
            raise

    async def _sample(self, kind: str, prompt: Prompt, question: str, options: Options,
                      generation: GenerationSettings, request_id: str, episode: Episode, accounting: _Accounting,
                      scorer: _CountedScorer, start: float) -> EpisodeResult:
        labels = accounting.labels
        sampler = EpisodeSampler(self.generators[kind], scorer, self.sampler_settings, listener=accounting,
                                 generation=generation, requests=self.limiter.lane())
        limits = EpisodeLimits(deadline=start + options.deadline_s, max_total_tokens=options.max_total_tokens)
        try:
            run = await sampler.run_episode(episode, LiveProblem(request_id, question), prompt, limits=limits)
        except RequestRejected as exc:
            status = 400 if exc.status in (400, 413, 422) else 502
            raise ApiError(status, f"the upstream refused the request: {self.public(exc.detail)}", None,
                           "upstream_rejected") from None
        except InputError as exc:  # a scorer that broke its contract (a score outside [0, 1])
            raise ApiError(502, f"scorer failure: {self._logged(exc)}", None, "scorer_error") from None
        except OptscaleError as exc:
            raise ApiError(502, f"scorer failure: {self._logged(exc)}", None, "scorer_error") from None
        except (httpx.HTTPError, OSError) as exc:
            raise ApiError(502, f"scorer failure: {self._logged(exc, type(exc).__name__ + ': ')}", None,
                           "scorer_error") from None
        finally:
            prompt_tokens = accounting.prompt_tokens()
            if prompt_tokens:
                self.metrics.tokens.labels(model=self.config.model, kind="prompt").inc(prompt_tokens)
        elapsed = time.monotonic() - start
        outcome = episode.result()
        stop = run.cut or ("upstream_failures" if run.error else outcome.stop_reason)
        self.metrics.stop_reason.labels(**labels, reason=stop).inc()
        if not run.samples:
            if run.cut == "deadline":
                raise ApiError(504, f"deadline_s ({options.deadline_s:g} s) passed before any sample was scored",
                               "optscale.deadline_s", "deadline_exceeded")
            if run.cut == "max_total_tokens":
                raise ApiError(400, f"max_total_tokens ({options.max_total_tokens}) was spent before any sample "
                               "finished", "optscale.max_total_tokens", "max_total_tokens_exhausted")
            if run.failure is not None:
                self._pass_on_wait(run.failure)
            raise ApiError(502, f"upstream failure: {self._logged(run.error or 'no sample')}", None, "upstream_error")
        self.metrics.samples_used.labels(**labels).observe(len(run.samples))
        flag = int(outcome.estimates.get("fit_flag") or 0)
        if flag:
            for name in FitFlag.describe(flag).split("|"):
                self.metrics.fit_failures.labels(**labels, flag=name).inc()
        chosen = outcome.chosen if outcome.chosen is not None else max(
            range(len(run.samples)), key=lambda i: float(run.samples[i]["score"]))
        scored = [float(s.get("latency_s") or 0.0) for s in run.samples]
        timings = {"total_s": round(elapsed, 4), "first_sample_s": round(min(scored), 4) if scored else None}
        return EpisodeResult(options, run.samples, run.events, outcome, stop, chosen, timings,
                             accounting.prompt_tokens(), scorer.tokens)

    async def sample_on(self, kind: str, prompt: Prompt, question: str, episode: Episode, earlier: ProblemLog,
                        generation: GenerationSettings, request_id: str, requests: Any,
                        deadline_s: float) -> EpisodeRun:
        """Continue an episode that has observed ``earlier``'s samples, taking upstream requests through
        ``requests`` (shadow sampling: the limiter's background lane); its tokens are counted apart."""
        sampler = EpisodeSampler(self.generators[kind], _CountedScorer(self, self.config.model), self.sampler_settings,
                                 listener=_ShadowAccounting(self), generation=generation, requests=requests)
        limits = EpisodeLimits(deadline=time.monotonic() + deadline_s)
        return await sampler.run_episode(episode, LiveProblem(request_id, question), prompt, limits=limits,
                                         earlier=earlier)

    def _pass_on_wait(self, failure: RequestFailed) -> None:
        """An upstream that kept answering 429 (or 503 with a ``Retry-After``) asks its clients to wait:
        so does this server, with the upstream's ``Retry-After``, rather than calling it a failure (502)."""
        if not (failure.status == 429 or (failure.status == 503 and failure.retry_after is not None)):
            return
        wait = math.ceil(failure.retry_after if failure.retry_after is not None else self.config.retry_after_s)
        limited = failure.status == 429
        raise ApiError(failure.status, f"the upstream {'limits the rate of' if limited else 'cannot take'} requests "
                       f"now; retry after {wait} s: {self._logged(failure)}", None,
                       "upstream_rate_limited" if limited else "upstream_unavailable", {"Retry-After": str(wait)})

    def _logged(self, error: Any, prefix: str = "") -> str:
        """An upstream or scorer error: logged in full (URLs included), shown to the client without URLs."""
        text = self.redact(prefix + str(error))
        log.warning("upstream or scorer failure: %s", text[:1000])
        return self.public(text)


def estimates(outcome: Outcome) -> dict[str, Any]:
    out = plain(dict(outcome.estimates))
    if "fit_flag" in out:
        out["fit_flags"] = FitFlag.describe(int(out["fit_flag"]))
    return out
