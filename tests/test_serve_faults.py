"""``optscale serve`` in front of a faulty upstream: rate limits, resets, malformed chunks, hangs.

Each fault is retried (a transient one) or answered (502 once the retries are spent, 200 or 504
at a deadline), never left hanging; afterwards the server holds no upstream slot or episode and
serves the next request. Usage stays the sum of what the upstream sent, including the partial
tokens of attempts that broke off.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import live_fakes as fakes
import openai
import pytest
from serve_fakes import FaultyUpstream, Proxy, wait_for

Q = "Problem p1: how many?"
MESSAGES = [{"role": "user", "content": Q}]
IDLE = 1.0  # the proxy's idle timeout here: a hung upstream stream is given up after this long (not
# shorter: a loaded CI machine can be slow to answer, and a spurious retry breaks the request counts)


def faulty_proxy(up, **settings):
    client = {"backoff": 0.01, "backoff_max": 0.05, "idle_timeout": IDLE, "timeout": 20, "retries": 2,
              **settings.pop("client", {})}
    return Proxy(up.base_url, client=client, **{"n_max": 2, "in_flight": 1, **settings})


def inject(up, faults) -> None:
    """Faults for the next generation requests (after the proxy's readiness check, which generates too)."""
    up.arrivals.clear()
    up.config.faults.extend(faults)


def idle(px) -> bool:
    return px.service.limiter.in_use == 0 and px.service.gate.active == 0


def still_serves(px, up) -> None:
    """No fault left queued, nothing held, and a clean request is answered in full."""
    up.config.faults.clear()
    wait_for(lambda: idle(px), what="slots freed")
    c = openai.OpenAI(base_url=px.base_url, api_key="x", max_retries=0, timeout=20)
    r = c.chat.completions.create(model="fake-model", messages=MESSAGES, extra_body={"optscale": {"policy": "bon"}})
    assert r.model_extra["optscale"]["n_used"] == px.config.n_max


@pytest.mark.parametrize("fault", ["429", "500", "drop", "malformed", "truncate", "hang", "hang_start", "bad_index"])
def test_a_transient_fault_is_retried_and_every_sent_token_is_counted(fault):
    with FaultyUpstream(fakes.FakeConfig(seed=5)) as up, faulty_proxy(up) as px:
        inject(up, [fault])
        before = up.sent_tokens()
        c = openai.OpenAI(base_url=px.base_url, api_key="x", max_retries=0, timeout=20)
        start = time.monotonic()
        r = c.chat.completions.create(model="fake-model", messages=MESSAGES, extra_body={"optscale": {
            "policy": "bon", "return_samples": True}})
        took = time.monotonic() - start
        o = r.model_extra["optscale"]
        assert o["n_used"] == 2 and o["stop_reason"] == "n_max" and not up.config.faults  # the fault was met
        assert len(up.arrivals) == 3  # one request retried once, the other served at once
        assert took < IDLE + 5  # a hang costs one idle timeout, not the request's whole timeout
        if fault.startswith("hang"):
            up.wait_disconnected(1)  # the hung stream was closed, not left open upstream
        # every token the upstream sent, the broken attempt's partial stream included, is in the usage
        assert r.usage.completion_tokens == up.sent_tokens() - before
        b = o["usage_breakdown"]
        assert b["generation_completion_tokens"] == sum(s["tokens"] for s in o["samples"])
        partial = sum(x.sent for x in up.served if not x.finished)
        # the broken attempt's tokens are failed ones; its prompt was paid too (once per upstream request)
        assert b["failed_completion_tokens"] == partial and (partial > 0) == (
            fault in ("drop", "malformed", "truncate", "hang", "bad_index"))
        assert r.usage.prompt_tokens == b["prompt_tokens"] == len(Q.split()) * len(up.arrivals)
        still_serves(px, up)


@pytest.mark.parametrize("fault", ["500", "drop", "malformed", "hang_start"])  # 429: test_serve_upstream.py
def test_a_persistent_fault_answers_502_after_the_retries_and_the_server_keeps_serving(fault):
    with FaultyUpstream(fakes.FakeConfig(seed=6)) as up, faulty_proxy(up, max_failures=2) as px:
        inject(up, [fault] * 100)
        c = openai.OpenAI(base_url=px.base_url, api_key="x", max_retries=0, timeout=30)
        with pytest.raises(openai.APIStatusError) as err:
            c.chat.completions.create(model="fake-model", messages=MESSAGES)
        assert err.value.status_code == 502 and err.value.body["code"] == "upstream_error"
        assert "3 attempts failed" in err.value.body["message"]
        assert str(up.port) not in err.value.body["message"]  # "upstream": where it is stays in the log
        # two samples, each tried three times (retries=2), then max_failures stops the episode
        assert len(up.arrivals) == 6
        with pytest.raises(openai.APIError, match="upstream failure"):  # streamed: an SSE error event
            list(c.chat.completions.create(model="fake-model", messages=MESSAGES, stream=True))
        text = httpx.get(px.url("/metrics")).text
        # the streamed one began with 200 and its error event counts as the 502 it is
        assert 'optscale_requests_total{model="fake-model",policy="optscale",status="502"} 2.0' in text
        assert 'optscale_stop_reason_total{model="fake-model",policy="optscale",reason="upstream_failures"} 2.0' \
            in text
        still_serves(px, up)


def test_retry_after_is_honoured_up_to_backoff_max():
    with FaultyUpstream() as up, faulty_proxy(up, n_max=1, client={"backoff_max": 2}) as px:
        inject(up, ["429:0.5"])
        c = openai.OpenAI(base_url=px.base_url, api_key="x", max_retries=0, timeout=20)
        r = c.chat.completions.create(model="fake-model", messages=MESSAGES)
        assert r.choices[0].message.content and len(up.arrivals) == 2
        assert up.arrivals[1] - up.arrivals[0] >= 0.5  # the upstream asked for half a second


def test_a_retry_after_beyond_the_deadline_answers_at_the_deadline():
    """A rate-limited upstream asking for a minute does not hold the client past its deadline_s."""
    with FaultyUpstream() as up, faulty_proxy(up, client={"backoff_max": 120}) as px:
        inject(up, ["429:60"] * 10)
        c = openai.OpenAI(base_url=px.base_url, api_key="x", max_retries=0, timeout=30)
        start = time.monotonic()
        with pytest.raises(openai.APIStatusError) as err:
            c.chat.completions.create(model="fake-model", messages=MESSAGES,
                                      extra_body={"optscale": {"deadline_s": 0.5}})
        assert err.value.status_code == 504 and err.value.body["param"] == "optscale.deadline_s"
        assert time.monotonic() - start < 5
        still_serves(px, up)


def test_a_deadline_during_a_hang_answers_the_best_so_far():
    """One sample finished, the other hangs: the deadline answers 200 with the finished one."""
    with FaultyUpstream(fakes.FakeConfig(seed=7)) as up, \
            faulty_proxy(up, in_flight=2, client={"idle_timeout": 30}) as px:
        inject(up, [None, "hang_start"])
        c = openai.OpenAI(base_url=px.base_url, api_key="x", max_retries=0, timeout=30)
        r = c.chat.completions.create(model="fake-model", messages=MESSAGES, extra_body={"optscale": {
            "policy": "bon", "deadline_s": 1.0, "return_samples": True}})
        o = r.model_extra["optscale"]
        assert r.choices[0].message.content and o["stop_reason"] == "deadline" and o["n_used"] == 1
        assert o["n_cancelled"] == 1 and o["timings"]["total_s"] < 3
        up.wait_disconnected(1)
        still_serves(px, up)


def test_mixed_faults_under_concurrency_never_hang_and_leave_nothing_behind():
    faults = ["429", "500", "drop", "malformed", "truncate", "hang", "hang_start", "bad_index", None, None] * 4
    with FaultyUpstream(fakes.FakeConfig(seed=8, token_latency=0.001)) as up, \
            faulty_proxy(up, n_max=3, in_flight=3, max_in_flight=4, max_failures=2) as px:
        inject(up, faults)

        async def go():
            async with openai.AsyncOpenAI(base_url=px.base_url, api_key="x", max_retries=0, timeout=30) as c:
                async def one(stream: bool):
                    try:
                        if stream:
                            chunks = [x async for x in await c.chat.completions.create(
                                model="fake-model", messages=MESSAGES, stream=True,
                                stream_options={"include_usage": True})]
                            return "ok", chunks[-1].usage.completion_tokens
                        r = await c.chat.completions.create(model="fake-model", messages=MESSAGES)
                        return "ok", r.usage.completion_tokens
                    except openai.APIStatusError as exc:
                        return "status", exc.status_code
                    except openai.APIError as exc:  # an error event in a stream
                        return "event", str(exc)

                return await asyncio.gather(*(one(i % 2 == 1) for i in range(12)))

        start = time.monotonic()
        results = asyncio.run(go())
        assert time.monotonic() - start < 25
        for kind, value in results:  # answered in full, or a 502 (as a status or a stream's error event)
            if kind == "ok":
                assert value > 0, results
            elif kind == "status":
                assert value == 502, results
            else:
                assert "upstream failure" in value, results
        assert any(kind == "ok" for kind, _ in results)
        wait_for(lambda: idle(px), what="slots freed")
        assert "optscale_inflight_samples 0.0" in httpx.get(px.url("/metrics")).text
        # every upstream stream ended: finished, broke off by fault, or closed by the proxy
        for x in up.served:
            wait_for(lambda x=x: x.finished or x.disconnected or x.fault in ("drop", "malformed", "truncate",
                                                                                "bad_index"), what="stream ended")
        still_serves(px, up)
