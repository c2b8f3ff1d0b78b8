"""The OpenAI-compatible client against a real (in-process) fake server with injected faults."""

from __future__ import annotations

import asyncio
import socket

import pytest

pytest.importorskip("fastapi", reason="the fake server needs fastapi and uvicorn (pip install '.[local]')")
pytest.importorskip("uvicorn", reason="the fake server needs fastapi and uvicorn (pip install '.[local]')")

from live_fakes import MODEL, FakeConfig, FakeServer  # noqa: E402

from optscale.errors import InputError  # noqa: E402
from optscale.live.generators import (  # noqa: E402
    ClientSettings,
    EndpointPool,
    GenerationSettings,
    OpenAIGenerator,
    Prompt,
    RequestFailed,
    RequestRejected,
    TokenMeter,
)

PROMPT = Prompt(messages=({"role": "user", "content": "Problem a: add."},), text="Problem a: add.")
FAST = ClientSettings(backoff=0.01, backoff_max=0.05, idle_timeout=0.5, timeout=5, retries=3)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def generate(server: FakeServer, n: int = 1, kind: str = "chat", client: ClientSettings = FAST, **settings):
    async def go():
        async with OpenAIGenerator(server.base_url, MODEL, GenerationSettings(**settings), kind=kind,
                                   client=client) as gen:
            meter = TokenMeter()
            return await gen.generate(PROMPT, n=n, meter=meter), meter

    return asyncio.run(go())


@pytest.mark.parametrize("kind", ["chat", "completion"])
@pytest.mark.parametrize("stream", [True, False])
def test_tokens_come_from_the_server_usage(kind, stream):
    with FakeServer() as server:
        [c], _ = generate(server, kind=kind, stream=stream, logprobs=True)
    [served] = server.served
    assert c.tokens == served.usage == served.sent and c.tokens_source == "usage"
    assert c.finish_reason == "stop" and "\\boxed{" in c.text
    assert len(c.logprobs) == c.tokens and c.prompt_tokens is not None


@pytest.mark.parametrize("logprobs, source", [(True, "logprobs"), (False, "chunks")])
def test_without_usage_the_streamed_tokens_are_counted(logprobs, source):
    with FakeServer(FakeConfig(usage_in_stream=False)) as server:
        [c], meter = generate(server, logprobs=logprobs)
    assert c.tokens_source == source and c.tokens == server.served[0].sent == meter.streamed
    assert meter.by_chunks is (not logprobs)


def test_a_seed_is_sent_only_when_set():
    gen = OpenAIGenerator("http://x/v1", MODEL)
    assert "seed" not in gen._body(PROMPT, 1, GenerationSettings())[1]
    assert gen._body(PROMPT, 1, GenerationSettings(seed=7))[1]["seed"] == 7


def test_n_choices_and_servers_that_ignore_n():
    with FakeServer() as server:
        choices, _ = generate(server, n=3, logprobs=True)
    assert len(choices) == 3 and all(c.tokens_source == "usage" for c in choices)
    assert sum(c.tokens for c in choices) == server.served[0].usage
    with FakeServer(FakeConfig(honor_n=False)) as server:
        choices, _ = generate(server, n=3)
    assert len(choices) == 1


def test_non_streamed_n_without_logprobs_splits_the_exact_total():
    with FakeServer() as server:
        choices, _ = generate(server, n=3, stream=False)
    assert [c.tokens_source for c in choices] == ["usage_split"] * 3
    assert sum(c.tokens for c in choices) == server.served[0].usage


@pytest.mark.parametrize("fault", ["429", "500", "drop", "truncate", "malformed", "hang", "hang_start"])
def test_transient_faults_are_retried_and_their_tokens_counted(fault):
    with FakeServer(FakeConfig(faults=[fault])) as server:
        [c], meter = generate(server)
    failed, ok = server.served[:-1], server.served[-1]
    assert c.attempts == 2 and ok.finished
    assert c.tokens == ok.usage
    # tokens streamed by the failed attempt were generated and are paid for: counted as wasted
    assert c.wasted_tokens == meter.wasted == sum(r.sent for r in failed)


def test_max_tokens_is_passed_and_length_reported():
    with FakeServer(FakeConfig(min_tokens=30, max_tokens=30)) as server:
        [c], _ = generate(server, max_tokens=5)
    assert c.tokens == 5 and c.finish_reason == "length"


def test_exhausted_retries_raise_request_failed_with_the_last_reason():
    with FakeServer(FakeConfig(faults=["500"] * 10)) as server:
        with pytest.raises(RequestFailed, match="4 attempts failed; last: HTTP 500"):
            generate(server)
        assert len(server.served) == 0  # 500s are answered before any generation


def test_a_wrong_model_is_rejected_at_once_naming_the_flag():
    async def go(url):
        async with OpenAIGenerator(url, "no-such-model", client=FAST) as gen:
            await gen.generate(PROMPT)

    with FakeServer() as server:
        with pytest.raises(RequestRejected) as info:
            asyncio.run(go(server.base_url))
    assert info.value.status == 404 and info.value.where == "--model"


def check(url: str, model: str = MODEL, logprobs: bool = False):
    async def go():
        async with OpenAIGenerator(url, model, client=FAST) as gen:
            await gen.check(need_logprobs=logprobs, why="--scorer confidence")

    asyncio.run(go())


def test_check_names_the_flag_for_each_setup_error():
    with pytest.raises(InputError, match="cannot reach") as info:
        check(f"http://127.0.0.1:{free_port()}/v1")
    assert info.value.where == "--base-url"
    with FakeServer(FakeConfig(logprobs=False)) as server:
        with pytest.raises(InputError, match="serves fake-model") as info:
            check(server.base_url, model="gpt-9")
        assert info.value.where == "--model"
        with pytest.raises(InputError, match="no token logprobs") as info:
            check(server.base_url, logprobs=True)
        assert info.value.where == "--scorer confidence"
        check(server.base_url)


def test_cancelling_closes_the_stream_and_keeps_the_tokens_so_far():
    async def go(url):
        async with OpenAIGenerator(url, MODEL, client=FAST) as gen:
            meter = TokenMeter()
            task = asyncio.create_task(gen.generate(PROMPT, meter=meter))
            while meter.streamed < 5:
                await asyncio.sleep(0.005)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return meter

    with FakeServer(FakeConfig(token_latency=0.02, min_tokens=200, max_tokens=200)) as server:
        meter = asyncio.run(go(server.base_url))
        for _ in range(100):
            if server.served[0].disconnected:
                break
            asyncio.run(asyncio.sleep(0.02))
    served = server.served[0]
    assert served.disconnected and not served.finished
    assert 5 <= meter.streamed <= served.sent <= meter.streamed + 2


def test_endpoints_share_the_load_and_a_dead_one_is_rested():
    async def go(urls):
        async with OpenAIGenerator(urls, MODEL, client=FAST) as gen:
            await asyncio.gather(*(gen.generate(PROMPT) for _ in range(12)))
            return gen.pool.endpoints

    with FakeServer() as a, FakeServer() as b:
        dead = f"http://127.0.0.1:{free_port()}/v1"
        endpoints = asyncio.run(go([a.base_url, b.base_url, dead]))
    assert len(a.served) + len(b.served) == 12
    assert len(a.served) >= 3 and len(b.served) >= 3
    assert endpoints[2].errors >= 1 and endpoints[2].down_until > 0


def test_endpoint_pool_rests_after_repeated_failures_and_recovers():
    pool = EndpointPool(["http://a", "http://b"], fail_threshold=2, rest=10)
    for _ in range(2):
        e = pool.acquire()
        while e.url != "http://a":
            pool.release(e, True)
            e = pool.acquire()
        pool.release(e, False)
    assert all(pool.acquire().url == "http://b" for _ in range(4))
    pool.endpoints[0].down_until = 0
    e = pool.endpoints[0]
    e.in_flight += 1
    pool.release(e, True)
    assert e.failures == 0


def test_reasoning_content_is_kept_before_the_answer():
    from optscale.live.generators import _Choice

    choice = _Choice()
    choice.reasoning.append("think hard")
    choice.content.append("\\boxed{3}")
    assert choice.text() == "<think>think hard</think>\\boxed{3}"


def test_a_refused_api_key_is_rejected_at_once_naming_the_flag():
    import httpx

    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(401, json={"error": {"message": "Incorrect API key provided"}})

    async def go():
        async with OpenAIGenerator("http://server/v1", MODEL, client=FAST,
                                   transport=httpx.MockTransport(handler)) as gen:
            await gen.generate(PROMPT)

    with pytest.raises(RequestRejected, match="Incorrect API key") as info:
        asyncio.run(go())
    assert info.value.where == "--api-key" and len(calls) == 1  # no retries
