"""The public episode API (``EpisodeSampler.run_episode`` with ``EpisodeLimits``) that ``run`` and ``serve`` share."""

from __future__ import annotations

import asyncio
import time

import live_fakes as fakes

from optscale.live import (
    ClientSettings,
    ConfidenceScorer,
    EpisodeLimits,
    EpisodeSampler,
    GenerationSettings,
    Listener,
    LiveProblem,
    MemoryStore,
    OpenAIGenerator,
    Prompt,
    SamplerSettings,
    sample_problems,
)
from optscale.live.sampler import sample_episode
from optscale.policies import make_policy

FAST = ClientSettings(backoff=0.01, backoff_max=0.05, idle_timeout=5, timeout=30, retries=2)
Q = "Problem e1: how many?"
PROMPT = Prompt(messages=({"role": "user", "content": Q},), text=Q)


class _Seen(Listener):
    """Counts the records logged and sets ``first`` when the first sample arrives."""

    def __init__(self) -> None:
        self.records: list[dict] = []
        self.first = asyncio.Event()

    def on_record(self, record: dict) -> None:
        self.records.append(record)
        if record["type"] == "sample":
            self.first.set()


def episode_run(server, policy, limits=None, store=None, listener=None, settings=None, max_tokens=64):
    async def go():
        async with OpenAIGenerator(server.base_url, fakes.MODEL, GenerationSettings(max_tokens=max_tokens),
                                   client=FAST) as g:
            sampler = EpisodeSampler(g, ConfidenceScorer(), settings or SamplerSettings(in_flight=2), store=store,
                                     listener=listener)
            return await sampler.run_episode(policy.start(), LiveProblem("e1", Q), PROMPT,
                                             limits=limits(listener) if callable(limits) else limits)

    return asyncio.run(go())


def test_an_episode_without_limits_runs_until_its_policy_stops_and_keeps_its_texts():
    with fakes.FakeServer(fakes.FakeConfig(seed=3)) as server:
        run = episode_run(server, make_policy("bon", 3))
    assert run.cut is None and run.error is None and run.failure is None
    assert sorted(s["index"] for s in run.samples) == [0, 1, 2]  # in arrival order
    assert all(s["problem"] == "e1" and s["text"] and fakes.FakeServer.quality(s["text"]) for s in run.samples)
    assert run.spent() == server.sent_tokens()


def test_with_a_store_the_texts_stay_in_the_store():
    store = MemoryStore()
    with fakes.FakeServer(fakes.FakeConfig(seed=4)) as server:
        run = episode_run(server, make_policy("bon", 2), store=store)
    logged = store.state.log("e1").samples
    assert [r["id"] for r in logged] == [r["id"] for r in run.samples]
    assert all(r["text"] for r in logged) and not any("text" in r for r in run.samples)


def test_a_token_cap_passed_in_ends_sampling():
    config = fakes.FakeConfig(seed=5, min_tokens=20, max_tokens=20)
    with fakes.FakeServer(config) as server:
        run = episode_run(server, make_policy("bon", 16), limits=EpisodeLimits(max_total_tokens=50), max_tokens=20)
    assert run.cut == "max_total_tokens" and 2 <= len(run.samples) < 16
    assert run.spent() <= 50 + 20  # the cap plus at most one sample's max_tokens


def test_a_deadline_passed_in_ends_sampling_with_the_samples_so_far():
    config = fakes.FakeConfig(seed=6, token_latency=0.02, min_tokens=10, max_tokens=10)
    with fakes.FakeServer(config) as server:
        start = time.monotonic()
        run = episode_run(server, make_policy("bon", 64), limits=EpisodeLimits(deadline=start + 1.0),
                          max_tokens=10)
    assert run.cut == "deadline" and 1 <= len(run.samples) < 64
    assert time.monotonic() - start < 10


def test_a_past_deadline_samples_nothing():
    with fakes.FakeServer() as server:
        run = episode_run(server, make_policy("bon", 4), limits=EpisodeLimits(deadline=time.monotonic() - 1))
    assert run.cut == "deadline" and run.samples == [] and run.events == [] and server.served == []


def test_setting_cancel_ends_sampling_at_once_and_accounts_the_requests_under_way():
    """The caller's own reason to stop (a shutdown): requests under way are cut and what they cost is logged."""
    config = fakes.FakeConfig(seed=7, token_latency=0.01, min_tokens=10, max_tokens=400)
    seen = _Seen()
    with fakes.FakeServer(config) as server:
        async def go():
            async with OpenAIGenerator(server.base_url, fakes.MODEL, GenerationSettings(max_tokens=400),
                                       client=FAST) as g:
                cancel = asyncio.Event()
                sampler = EpisodeSampler(g, ConfidenceScorer(), SamplerSettings(in_flight=3), listener=seen)
                task = asyncio.create_task(sampler.run_episode(make_policy("bon", 64).start(), LiveProblem("e1", Q),
                                                               PROMPT, limits=EpisodeLimits(cancel=cancel)))
                await asyncio.wait_for(seen.first.wait(), 30)
                cancel.set()
                return await asyncio.wait_for(task, 30)

        run = asyncio.run(go())
        server.wait_disconnected(1)
    assert run.cut == "cancelled" and 1 <= len(run.samples) < 64
    cancelled = [e for e in run.events if e["type"] == "cancelled"]
    assert cancelled and len(seen.records) == len(run.samples) + len(run.events)
    # every token the server sent to a finished or cancelled request is accounted
    assert run.spent() <= server.sent_tokens()


def test_run_goes_through_the_public_episode_api(monkeypatch):
    calls = []
    original = EpisodeSampler.run_episode

    async def spy(self, episode, problem, prompt, **kwargs):
        calls.append(problem.id)
        return await original(self, episode, problem, prompt, **kwargs)

    monkeypatch.setattr(EpisodeSampler, "run_episode", spy)
    items = [LiveProblem(f"p{i}", f"Problem p{i}: how many?") for i in range(3)]
    with fakes.FakeServer(fakes.FakeConfig(seed=8)) as server:
        async def go():
            async with OpenAIGenerator(server.base_url, fakes.MODEL, GenerationSettings(max_tokens=64),
                                       client=FAST) as g:
                return await sample_problems(items, g, ConfidenceScorer(), make_policy("bon", 2))

        results = asyncio.run(go())
    assert sorted(calls) == ["p0", "p1", "p2"] and all(r.n_samples == 2 for r in results)


def test_sample_episode_of_earlier_versions_still_runs_one_episode():
    with fakes.FakeServer(fakes.FakeConfig(seed=10)) as server:
        async def go():
            async with OpenAIGenerator(server.base_url, fakes.MODEL, GenerationSettings(max_tokens=64),
                                       client=FAST) as g:
                return await sample_episode(make_policy("bon", 2).start(), PROMPT, Q, g, ConfidenceScorer(), id="old",
                                            max_total_tokens=10_000)

        run = asyncio.run(go())
    assert len(run.samples) == 2 and run.cut is None and all(s["problem"] == "old" and s["text"] for s in run.samples)
