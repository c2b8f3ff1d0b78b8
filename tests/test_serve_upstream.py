"""``optscale serve`` in front of an upstream that keeps failing, rate limits, or is slower than its pool;
what a failed episode cost; and replies that stay valid JSON whatever the estimates hold."""

from __future__ import annotations

import json
import math
import threading
from types import SimpleNamespace

import httpx
import live_fakes as fakes
import pytest
from serve_fakes import FaultyUpstream, Proxy, wait_for

from optscale.live import EpisodeSampler
from optscale.policies import Outcome
from optscale.serve.episodes import EpisodeResult
from optscale.serve.responses import chat_completion, chat_stream, text_completion, text_stream

Q = "Problem p1: how many?"
MESSAGES = [{"role": "user", "content": Q}]


def faulty_proxy(up, **settings):
    client = {"backoff": 0.01, "backoff_max": 0.05, "idle_timeout": 2, "timeout": 20, "retries": 2,
              **settings.pop("client", {})}
    return Proxy(up.base_url, client=client, **{"n_max": 2, "in_flight": 1, **settings})


def inject(up, faults) -> None:
    """Faults for the next generation requests (after the proxy's readiness check, which generates too)."""
    up.arrivals.clear()
    up.config.faults.extend(faults)


def post(px, stream: bool = False, **optscale) -> httpx.Response:
    body = {"model": "fake-model", "messages": MESSAGES, "stream": stream,
            **({"optscale": optscale} if optscale else {})}
    return httpx.post(px.url("/v1/chat/completions"), json=body, timeout=60)


def sse_events(response: httpx.Response) -> list:
    return [json.loads(line[6:]) for line in response.text.splitlines()
            if line.startswith("data: ") and line != "data: [DONE]"]


def test_an_upstream_that_failed_for_ever_still_answers_502():
    """After ~1,030 consecutive failures the rest arithmetic overflowed: 500 instead of 502."""
    with FaultyUpstream() as up, faulty_proxy(up, max_failures=1) as px:
        px.service.generators["chat"].pool.endpoints[0].failures = 10_000
        inject(up, ["500"] * 10)
        r = post(px)
        assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_error"


def test_a_rate_limited_upstream_is_answered_429_with_its_retry_after():
    with FaultyUpstream() as up, faulty_proxy(up, max_failures=2) as px:
        inject(up, ["429:30"] * 20)
        r = post(px)
        assert r.status_code == 429 and r.headers["retry-after"] == "30"
        error = r.json()["error"]
        assert error["type"] == "rate_limit_error" and error["code"] == "upstream_rate_limited"
        assert str(up.port) not in error["message"]
        # the upstream asked for 30 s (more than backoff_max): no request was retried before that
        assert len(up.arrivals) == 2
        r = post(px, stream=True)
        [event] = sse_events(r)
        assert event["error"]["code"] == "upstream_rate_limited"


def test_a_persistent_429_without_a_long_retry_after_is_still_a_429():
    """The fake's plain ``429`` says ``Retry-After: 0``: retried (retries=2) for each of max_failures samples."""
    with FaultyUpstream() as up, faulty_proxy(up, max_failures=2) as px:
        inject(up, ["429"] * 20)
        r = post(px)
        assert r.status_code == 429 and r.headers["retry-after"] == "0"
        assert "3 attempts failed" in r.json()["error"]["message"] and len(up.arrivals) == 6
        text = httpx.get(px.url("/metrics")).text
        assert 'optscale_requests_total{model="fake-model",policy="optscale",status="429"} 1.0' in text


class Unavailable(FaultyUpstream):
    """Fault ``"503:S"`` answers 503 with ``Retry-After: S`` (an upstream draining or overloaded)."""

    async def _generate(self, body, chat):
        fault = self.config.faults[0] if self.config.faults else None
        if isinstance(fault, str) and fault.startswith("503:"):
            self.config.faults.pop(0)
            self.arrivals.append(0.0)
            return self._error(503, "overloaded", {"retry-after": fault.partition(":")[2]})
        return await super()._generate(body, chat)


def test_an_upstream_503_with_a_long_retry_after_is_passed_on():
    """(A 503 without a Retry-After is a failure like any 5xx: 502.)"""
    with Unavailable() as up, faulty_proxy(up, max_failures=1) as px:
        inject(up, ["503:7"] * 3)
        r = post(px)
        assert r.status_code == 503 and r.headers["retry-after"] == "7"
        assert r.json()["error"]["code"] == "upstream_unavailable" and len(up.arrivals) == 1


@pytest.mark.parametrize("stream", [False, True])
def test_a_failed_episode_reports_what_it_cost(stream):
    """Broken streams cost tokens; the 502 (or the SSE error event) says how many, next to ``error``."""
    with FaultyUpstream(fakes.FakeConfig(seed=9)) as up, faulty_proxy(up, max_failures=2) as px:
        inject(up, ["drop"] * 20)
        before = up.sent_tokens()
        r = post(px, stream=stream)
        body = sse_events(r)[0] if stream else r.json()
        assert (r.status_code == 200) if stream else (r.status_code == 502)
        assert body["error"]["code"] == "upstream_error"
        usage = body["usage"]
        spent = up.sent_tokens() - before
        assert spent > 0 and usage["completion_tokens"] == spent
        # two samples, each tried three times (an attempt on a connection the drop closed never arrives)
        assert 2 <= len(up.arrivals) <= 6
        # no broken stream reported its prompt's size: unknown, so 0 (the schema wants a number)
        assert usage["prompt_tokens"] == 0 and usage["total_tokens"] == spent


def test_inflight_samples_counts_requests_on_the_wire_not_those_queued_for_a_connection():
    """Three samples under way but one connection: the upstream sees one request, and so does the gauge."""
    with FaultyUpstream() as up, faulty_proxy(up, n_max=3, in_flight=3, client={"max_connections": 1}) as px:
        inject(up, ["hang_start"] * 3)
        served = len(up.served)
        with httpx.Client(timeout=60) as client:
            answer = {}
            thread = threading.Thread(target=lambda: answer.update(r=client.post(
                px.url("/v1/chat/completions"), json={"model": "fake-model", "messages": MESSAGES,
                                                      "optscale": {"policy": "bon", "deadline_s": 30}})))
            thread.start()
            wait_for(lambda: px.service.limiter.in_use == 3 and len(up.served) == served + 1, what="3 under way")
            gauge = [line for line in httpx.get(px.url("/metrics")).text.splitlines()
                     if line.startswith("optscale_inflight_samples ")]
            assert gauge == ["optscale_inflight_samples 1.0"]
            assert len(up.served) == served + 1  # the other two never reached the upstream
            up.config.faults.clear()
            # end the hung request: the proxy gives the hung stream up after its idle timeout
            thread.join(60)
        assert answer["r"].status_code == 200
        wait_for(lambda: px.service.limiter.in_use == 0, what="slots freed")
        assert "optscale_inflight_samples 0.0" in httpx.get(px.url("/metrics")).text


def test_serve_goes_through_the_public_episode_api(monkeypatch):
    calls = []
    original = EpisodeSampler.run_episode

    async def spy(self, episode, problem, prompt, **kwargs):
        calls.append((problem.id, kwargs["limits"].deadline is not None))
        return await original(self, episode, problem, prompt, **kwargs)

    monkeypatch.setattr(EpisodeSampler, "run_episode", spy)
    with FaultyUpstream() as up, faulty_proxy(up) as px:
        r = post(px, policy="bon")
        assert r.status_code == 200 and calls == [(r.headers["x-request-id"], True)]


def _result(estimates: dict) -> EpisodeResult:
    sample = {"type": "sample", "index": 0, "score": 0.5, "answer": "1", "tokens": 3, "wasted_tokens": 0,
              "finish_reason": "stop", "flag": None, "text": "The answer is 1.", "latency_s": 0.1}
    options = SimpleNamespace(name="beacon", settings={}, return_samples=True)
    return EpisodeResult(options, [sample], [], Outcome(0, "1", 1, "n_star", estimates), "n_star", 0,
                         {"total_s": 0.1, "first_sample_s": 0.1}, 5)


def _strict(text: str):
    def refuse(name: str):
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_non_finite_estimates_reach_no_reply_as_invalid_json():
    result = _result({"mu": math.nan, "sigma": math.inf, "index": -math.inf, "n_star": 2, "nested": [math.nan]})
    for render in (chat_completion, text_completion):
        body = _strict(json.dumps(render(result, "r1", 0, "m", 1), allow_nan=False))
        est = body["optscale"]["estimates"]
        assert est["mu"] is None and est["sigma"] is None and est["index"] is None and est["nested"] == [None]
        assert est["n_star"] == 2 and body["optscale"]["n_star"] == 2
    for render in (chat_stream, text_stream):
        chunks = [_strict(e[6:]) for e in render(result, "r1", 0, "m", 1, True) if e != "data: [DONE]\n\n"]
        [with_optscale] = [c for c in chunks if "optscale" in c]
        assert with_optscale["optscale"]["estimates"]["mu"] is None
