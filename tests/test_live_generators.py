"""The OpenAI-compatible client against a real (in-process) fake server with injected faults."""

from __future__ import annotations

import asyncio
import json
import logging
import socket

import httpx
import pytest
from live_fakes import MODEL, FakeConfig, FakeServer

from optscale.errors import InputError
from optscale.live.openai import OpenAIGenerator, _Choice
from optscale.live.transport import EndpointPool
from optscale.live.types import (
    ClientSettings,
    GenerationSettings,
    Prompt,
    RequestFailed,
    RequestRejected,
    TokenMeter,
)

PROMPT = Prompt(messages=({"role": "user", "content": "Problem a: add."},), text="Problem a: add.")
# A generous idle timeout: a loaded CI machine once took over 0.5 s to answer, and the retry broke
# a test that counts requests. Only the tests that make the server hang use HANGS' short one.
FAST = ClientSettings(backoff=0.01, backoff_max=0.05, idle_timeout=10, timeout=20, retries=3)
HANGS = FAST.model_copy(update={"idle_timeout": 1.0})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def generate(server: FakeServer, n: int = 1, kind: str = "chat", client: ClientSettings = FAST, url: str | None = None,
             **settings):
    async def go():
        async with OpenAIGenerator(url or server.base_url, MODEL, GenerationSettings(**settings), kind=kind,
                                   client=client) as gen:
            meter = TokenMeter()
            return await gen.generate(PROMPT, n=n, meter=meter), meter

    return asyncio.run(go())


def run_with(make, work):
    """``work(generator)`` in a fresh event loop with a generator that is always closed; returns both."""
    async def go():
        async with make() as gen:
            return await work(gen), gen

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
    async def bodies(gen):
        return gen._body(PROMPT, 1, GenerationSettings())[1], gen._body(PROMPT, 1, GenerationSettings(seed=7))[1]

    (plain, seeded), _ = run_with(lambda: OpenAIGenerator("http://x/v1", MODEL), bodies)
    assert "seed" not in plain and seeded["seed"] == 7


def test_streams_ask_for_a_usage_report():
    async def body(gen):
        return gen._body(PROMPT, 1, GenerationSettings(stream=True))[1]

    got, _ = run_with(lambda: OpenAIGenerator("http://x/v1", MODEL), body)
    assert got["stream_options"] == {"include_usage": True}


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
        [c], meter = generate(server, client=HANGS if fault.startswith("hang") else FAST)
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
    assert info.value.status == 404 and info.value.where == "model"


def check(url: str, model: str = MODEL, logprobs: bool = False):
    async def go():
        async with OpenAIGenerator(url, model, client=FAST) as gen:
            await gen.check(need_logprobs=logprobs, why="scorer")

    asyncio.run(go())


def test_check_names_the_flag_for_each_setup_error():
    with pytest.raises(InputError, match="cannot reach") as info:
        check(f"http://127.0.0.1:{free_port()}/v1")
    assert info.value.where == "base_url"
    with FakeServer(FakeConfig(logprobs=False)) as server:
        with pytest.raises(InputError, match="serves fake-model") as info:
            check(server.base_url, model="gpt-9")
        assert info.value.where == "model"
        with pytest.raises(InputError, match="no token logprobs") as info:
            check(server.base_url, logprobs=True)
        assert info.value.where == "scorer"
        check(server.base_url)


def test_cancelling_closes_the_stream_and_keeps_the_tokens_so_far():
    async def go(url):
        async with OpenAIGenerator(url, MODEL, client=FAST) as gen:
            meter = TokenMeter()
            task = asyncio.create_task(gen.generate(PROMPT, meter=meter))
            async with asyncio.timeout(10):  # a deadline, not a timing bound
                while meter.streamed < 5:
                    await asyncio.sleep(0.005)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return meter

    with FakeServer(FakeConfig(token_latency=0.02, min_tokens=200, max_tokens=200)) as server:
        meter = asyncio.run(go(server.base_url))
        server.wait_disconnected()
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
    choice = _Choice()
    choice.reasoning.append("think hard")
    choice.content.append("\\boxed{3}")
    assert choice.text() == "<think>think hard</think>\\boxed{3}"


def test_a_refused_api_key_is_rejected_at_once_naming_the_flag():
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
    assert info.value.where == "api_key" and len(calls) == 1  # no retries


# -- regressions of issue 9 ----------------------------------------------------------------
@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("fault", ["negative_usage", "huge_usage", "float_usage"])
def test_impossible_usage_is_refused_flagged_and_logged_never_stored(fault, stream, caplog):
    """Issue 9 defect 4: negative, 1e30 and fractional usage fall back to the counted tokens."""
    with FakeServer(FakeConfig(faults=[fault])) as server:
        with caplog.at_level(logging.WARNING, logger="optscale.live.openai"):
            [c], gen = run_with(lambda: OpenAIGenerator(server.base_url, MODEL, GenerationSettings(
                stream=stream, logprobs=True), client=FAST), lambda g: g.generate(PROMPT))
    served = server.served[0]
    assert c.tokens == served.sent == len(c.logprobs) and c.tokens_source == "logprobs"
    assert c.usage_invalid and "completion_tokens" in c.usage_invalid and c.attempts == 1
    assert gen.stats.usage_invalid == 1
    assert any("invalid usage report" in r.getMessage() for r in caplog.records)


def test_usage_above_what_was_streamed_is_refused():
    """A usage report far above the exactly counted (logprob) tokens is not believed."""
    def handler(request: httpx.Request) -> httpx.Response:
        chunks = [{"choices": [{"index": 0, "delta": {"content": f" t{i}"}, "logprobs": {
            "content": [{"token": f" t{i}", "logprob": -0.1}]}}]} for i in range(3)]
        chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        chunks.append({"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 900}})
        body = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
        return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})

    [c], _ = run_with(lambda: OpenAIGenerator("http://server/v1", MODEL, GenerationSettings(logprobs=True),
                                              client=FAST, transport=httpx.MockTransport(handler)),
                      lambda g: g.generate(PROMPT))
    assert c.tokens == 3 and c.tokens_source == "logprobs" and "exceeds" in c.usage_invalid
    assert c.prompt_tokens == 4


@pytest.mark.parametrize("stream", [True, False])
def test_a_malformed_choice_is_retried_like_any_transient_fault(stream):
    """Issue 9 defect 5: a choice with "index": "x" used to raise a ValueError outside the retry path."""
    with FakeServer(FakeConfig(faults=["bad_index"])) as server:
        [c], gen = run_with(lambda: OpenAIGenerator(server.base_url, MODEL, GenerationSettings(stream=stream),
                                                    client=FAST), lambda g: g.generate(PROMPT))
    assert c.attempts == 2 and server.served[-1].finished and gen.stats.malformed == 1
    with FakeServer(FakeConfig(faults=["bad_index"] * 10)) as server:
        with pytest.raises(RequestFailed, match="4 attempts failed; last: malformed choice"):
            generate(server, stream=stream)


def test_credentials_in_the_url_are_sent_but_never_shown(caplog):
    """Issue 9 defect 2: userinfo goes to the server as Basic auth, and nowhere else."""
    with FakeServer(FakeConfig(faults=["500", "500", "500", "500"])) as server:
        url = server.base_url.replace("http://", "http://alice:S3CRET-PASS@")
        with caplog.at_level(logging.INFO, logger="optscale.live"):
            [c], _ = generate(server, url=url, client=FAST.model_copy(update={"retries": 5}))
        path, auth = server.auth[-1]
        assert auth.startswith("Basic ") and path == "/v1/chat/completions"
        assert "S3CRET-PASS" not in c.endpoint and c.endpoint.startswith("http://***@127.0.0.1")
        with pytest.raises(InputError) as info:
            run_with(lambda: OpenAIGenerator(url, "other-model", client=FAST), lambda g: g.check_servers())
    assert "S3CRET-PASS" not in str(info.value) and "***@" in str(info.value)
    assert caplog.records and not any("S3CRET-PASS" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("fault", ["echo_key", "echo_key_500"])
def test_a_key_echoed_in_an_error_body_is_masked(fault, caplog):
    """Issue 9 defect 2: servers that repeat the key in their error message never get it printed."""
    key = "sk-very-secret-key-1234"
    client = ClientSettings(**{**FAST.model_dump(), "api_key": key, "retries": 1})
    with FakeServer(FakeConfig(faults=[fault] * 5)) as server:
        with caplog.at_level(logging.INFO, logger="optscale.live"), pytest.raises((RequestRejected, RequestFailed)) \
                as info:
            generate(server, client=client)
        assert server.auth[-1][1] == f"Bearer {key}"  # the key did go to its own server
    assert "Incorrect API key provided" in str(info.value) and key not in str(info.value)
    assert not any(key in r.getMessage() for r in caplog.records)
    assert key not in repr(client) and "api_key" not in client.model_dump()


def test_the_client_reads_no_key_from_the_environment(monkeypatch):
    """Only the application decides whose key goes where: OPENAI_API_KEY is not sent by the client itself."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-the-environment")
    with FakeServer() as server:
        generate(server)
    assert server.auth and all(auth is None for _, auth in server.auth)


@pytest.mark.parametrize("stream", [True, False])
def test_a_response_larger_than_the_request_allows_is_refused_not_buffered(stream):
    """A server that streams without end (or without a newline) cannot fill the client's memory."""
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(200, content=b"data: " + b"x" * (3 * 1024 * 1024),
                              headers={"content-type": "text/event-stream"})

    with pytest.raises(RequestFailed, match="response larger than"):
        run_with(lambda: OpenAIGenerator("http://server/v1", MODEL, GenerationSettings(max_tokens=4, stream=stream),
                                         client=FAST, transport=httpx.MockTransport(handler)),
                 lambda g: g.generate(PROMPT))
    assert len(calls) == FAST.retries + 1


@pytest.mark.parametrize("url", ["localhost:8000/v1", "ftp://host/v1", "http://", "http://[::1/v1"])
def test_a_server_url_that_is_not_http_is_refused_up_front(url):
    with pytest.raises(InputError, match="not an http") as info:
        EndpointPool([url])
    assert info.value.where == "base_url"
    with pytest.raises(InputError) as info:
        EndpointPool(["http://u:PASSWORD@[::1/v1"], where="scorer.base_url")
    assert info.value.where == "scorer.base_url" and "PASSWORD" not in str(info.value)


def test_a_body_that_cannot_be_decoded_is_a_transient_failure():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"not gzip at all", headers={"content-encoding": "gzip"})

    with pytest.raises(RequestFailed, match="DecodingError"):
        run_with(lambda: OpenAIGenerator("http://server/v1", MODEL, GenerationSettings(stream=False), client=FAST,
                                         transport=httpx.MockTransport(handler)), lambda g: g.generate(PROMPT))


# -- regressions of review 9 ---------------------------------------------------------------
def test_the_logprobs_check_fails_when_the_server_reports_neither_logprobs_nor_usage():
    """Review 9 item 7: the check let through a server whose answer had text but no token count."""
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"data": [{"id": MODEL}]})
        return httpx.Response(200, json={"choices": [{"index": 0, "finish_reason": "stop",
                                                      "message": {"content": "OK"}}]})

    with pytest.raises(InputError, match="returned no token logprobs") as info:
        run_with(lambda: OpenAIGenerator("http://server/v1", MODEL, GenerationSettings(stream=False), client=FAST,
                                         transport=httpx.MockTransport(handler)),
                 lambda g: g.check(need_logprobs=True, why="scorer"))
    assert info.value.where == "scorer"


@pytest.mark.parametrize("names", ["", "scorer."])
def test_a_key_and_credentials_in_the_url_are_refused_not_one_silently_dropped(names):
    """Review 9 item 16: httpx sends a URL's userinfo as Basic auth; the bearer key was silently not sent."""
    with pytest.raises(InputError, match="Basic auth") as info:
        OpenAIGenerator("http://bob:PW-123@server/v1", MODEL, client=FAST.model_copy(update={"api_key": "sk-KEY-9"}),
                        names=names)
    assert info.value.where == names + "api_key"
    assert "PW-123" not in str(info.value) and "sk-KEY-9" not in str(info.value)
    sent = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request.headers.get("authorization"))
        return httpx.Response(200, json={"choices": [{"index": 0, "message": {"content": "x"}}]})

    for url, key, expected in [("http://bob:PW-123@server/v1", None, "Basic "), ("http://server/v1", "sk-KEY-9",
                                                                                 "Bearer sk-KEY-9")]:
        run_with(lambda: OpenAIGenerator(url, MODEL, GenerationSettings(stream=False),
                                         client=FAST.model_copy(update={"api_key": key}),
                                         transport=httpx.MockTransport(handler)), lambda g: g.generate(PROMPT))
        assert sent[-1].startswith(expected)


@pytest.mark.parametrize("url", ["http://server/v1?api-key=QSECRET42", "http://server:99999/v1"])
def test_a_url_with_a_query_or_a_bad_port_is_refused_up_front(url):
    """Review 9 items 10 and 4e: a query string was mangled into request paths and printed; port 99999 crashed."""
    with pytest.raises(InputError) as info:
        OpenAIGenerator(url, MODEL, client=FAST)
    assert info.value.where == "base_url" and "QSECRET42" not in str(info.value)
