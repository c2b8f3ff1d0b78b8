"""``optscale serve`` with real components: the official openai client, the proxy on a socket, the fake upstream."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import socket
import threading
import time
from types import SimpleNamespace

import httpx
import live_fakes as fakes
import openai
import pytest
from serve_fakes import Q, Proxy, wait_for

from conftest import toy_pool
from optscale.compose import build_policy
from optscale.errors import InputError
from optscale.policies import POLICIES, ConstantPriors, Decision, Problem, Sample
from optscale.policies.learned import fit_table
from optscale.replay import build_batch
from optscale.serve import build_serve_config
from optscale.serve.idempotency import IdempotencyStore
from optscale.serve.limits import FairLimiter

MESSAGES = [{"role": "user", "content": Q}]


@pytest.fixture(scope="module")
def proxy(upstream):
    with Proxy(upstream.base_url, n_max=4, max_n_max=16, max_deadline_s=60) as p:
        yield p


@pytest.fixture
def client(proxy):
    return openai.OpenAI(base_url=proxy.base_url, api_key="unused", max_retries=0)


def served_during(upstream, call):
    """The call's result and the tokens the upstream sent meanwhile."""
    before = upstream.sent_tokens()
    out = call()
    return out, upstream.sent_tokens() - before


# -- the core path -------------------------------------------------------------------------------
def test_chat_completion_returns_the_chosen_sample_and_honest_usage(upstream, client):
    r, sent = served_during(upstream, lambda: client.chat.completions.create(
        model="fake-model", messages=MESSAGES, extra_body={"optscale": {"policy": "bon", "return_samples": True}}))
    o = r.model_extra["optscale"]
    assert o["policy"] == "bon" and o["n_used"] == 4 == o["n_launched"] and o["stop_reason"] == "n_max"
    used = [s for s in o["samples"] if s["status"] == "used"]
    best = max(range(4), key=lambda i: used[i]["score"])
    assert o["chosen_index"] == best and o["chosen_score"] == used[best]["score"]
    assert r.choices[0].message.content == used[best]["text"] and r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens == sent == sum(s["tokens"] for s in used)
    assert r.usage.prompt_tokens == len(Q.split()) * 4  # once per upstream request
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    b = o["usage_breakdown"]
    assert b["generation_completion_tokens"] == sent and b["cancelled_completion_tokens"] == 0
    assert b["scorer_tokens"] == 0  # the confidence scorer calls no model
    assert set(o) >= {"settings", "n_cancelled", "n_star", "estimates", "timings"}


def test_completions_endpoint(upstream, client):
    r, sent = served_during(upstream, lambda: client.completions.create(
        model="fake-model+bon", prompt=Q, extra_body={"optscale": {"n_max": 2}}))
    assert r.object == "text_completion" and "\\boxed{" in r.choices[0].text
    assert r.model_extra["optscale"]["n_used"] == 2 and r.usage.completion_tokens == sent


def test_n_returns_the_best_distinct_answers(client):
    r = client.chat.completions.create(model="fake-model", messages=MESSAGES, n=3,
                                       extra_body={"optscale": {"policy": "bon", "n_max": 12, "return_samples": True}})
    samples = r.model_extra["optscale"]["samples"]
    by_text = {s["text"]: s for s in samples}
    answers = [by_text[c.message.content]["answer"] for c in r.choices]
    assert 1 <= len(r.choices) <= 3 and len(set(answers)) == len(answers)
    assert r.choices[0].message.content == samples[r.model_extra["optscale"]["chosen_index"]]["text"]
    scores = [by_text[c.message.content]["score"] for c in r.choices[1:]]
    assert scores == sorted(scores, reverse=True)


def test_streaming_sync_and_async_with_usage(upstream, proxy, client):
    stream, sent = served_during(upstream, lambda: list(client.chat.completions.create(
        model="fake-model", messages=MESSAGES, stream=True, stream_options={"include_usage": True},
        extra_body={"optscale": {"policy": "bon", "return_samples": True}})))
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    final = [c for c in stream if c.choices and c.choices[0].finish_reason][0]
    o = final.model_extra["optscale"]
    assert text == o["samples"][o["chosen_index"]]["text"]
    assert stream[-1].usage.completion_tokens == sent and not stream[-1].choices

    async def go():
        async with openai.AsyncOpenAI(base_url=proxy.base_url, api_key="x", max_retries=0) as c:
            s = await c.completions.create(model="fake-model", prompt=Q, stream=True)
            return [chunk async for chunk in s]

    chunks = asyncio.run(go())
    assert "\\boxed{" in "".join(c.choices[0].text for c in chunks if c.choices)


def test_keep_alive_comments_while_sampling(upstream, proxy):
    upstream.config.token_latency = 0.01
    try:
        with httpx.stream("POST", proxy.url("/v1/chat/completions"), timeout=30,
                          json={"model": "fake-model", "messages": MESSAGES, "stream": True}) as r:
            lines = [line for line in r.iter_lines() if line]
    finally:
        upstream.config.token_latency = 0.0
    assert ": keep-alive" in lines and lines[-1] == "data: [DONE]"
    assert lines.index(": keep-alive") < min(i for i, line in enumerate(lines) if line.startswith("data:"))


def test_policy_precedence_header_body_alias_default(client, proxy):
    def policy(**kw):
        r = client.chat.completions.with_raw_response.create(messages=MESSAGES, **kw)
        return r.parse().model_extra["optscale"]

    assert policy(model="fake-model")["policy"] == "optscale"  # the server default
    assert policy(model="fake-model+esc")["policy"] == "esc"
    assert policy(model="fake-model+esc", extra_body={"optscale": {"policy": "asc"}})["policy"] == "asc"
    o = policy(model="fake-model+esc", extra_body={"optscale": {"policy": "asc", "n_max": 2}},
               extra_headers={"X-OptScale-Policy": "sc", "X-OptScale-Settings": json.dumps({"n_max": 3})})
    assert o["policy"] == "sc" and o["settings"]["n_max"] == 3
    with pytest.raises(openai.BadRequestError) as err:  # a setting of another policy is refused, not ignored
        policy(model="fake-model", extra_body={"optscale": {"threshold": 0.9}},
               extra_headers={"X-OptScale-Policy": "sc"})
    assert err.value.body["param"] == "optscale.threshold"
    o = policy(model="fake-model", extra_body={"optscale": {"alpha": 0.5, "s_min": 0.6}},
               extra_headers={"X-OptScale-Settings": json.dumps({"alpha": 0.7})})
    assert o["settings"]["alpha"] == 0.7 and o["settings"]["s_min"] == 0.6


# -- bad input -------------------------------------------------------------------------------------
OK = {"model": "fake-model", "messages": MESSAGES}
BAD = [
    ({**OK, "optscale": {"nope": 1}}, {}, 400, "optscale.nope"),
    ({**OK, "optscale": {"alpha": 2}}, {}, 400, "optscale.alpha"),
    ({**OK, "optscale": {"policy": "bon", "select": "loudest"}}, {}, 400, "optscale.select"),
    ({**OK, "optscale": {"n_max": 0}}, {}, 400, "optscale.n_max"),
    ({**OK, "optscale": {"n_max": 17}}, {}, 400, "optscale.n_max"),
    ({**OK, "optscale": {"deadline_s": 61}}, {}, 400, "optscale.deadline_s"),
    ({**OK, "optscale": {"deadline_s": -1}}, {}, 400, "optscale.deadline_s"),
    ({**OK, "optscale": {"return_samples": "yes"}}, {}, 400, "optscale.return_samples"),
    ({**OK, "optscale": {"priors": "/etc/passwd"}}, {}, 400, "optscale.priors"),
    ({**OK, "optscale": {"policy": "learned", "table": "t.json"}}, {}, 400, "optscale.table"),  # no tables_dir
    ({**OK, "optscale": {"policy": "magic"}}, {}, 404, "optscale.policy"),
    ({**OK, "optscale": "fast"}, {}, 400, "optscale"),
    (OK, {"X-OptScale-Policy": "magic"}, 404, "X-OptScale-Policy"),
    (OK, {"X-OptScale-Settings": "{alpha"}, 400, "X-OptScale-Settings"),
    (OK, {"X-OptScale-Settings": "[1]"}, 400, "X-OptScale-Settings"),
    (OK, {"X-OptScale-Settings": '{"alpha": 1.5}'}, 400, "X-OptScale-Settings.alpha"),
    ({**OK, "model": "other"}, {}, 404, "model"),
    ({**OK, "model": "fake-model+magic"}, {}, 404, "model"),
    ({"model": "fake-model"}, {}, 400, "messages"),
    ({**OK, "messages": []}, {}, 400, "messages"),
    ({**OK, "messages": [{"role": "robot", "content": "hi"}]}, {}, 400, "messages[0].role"),
    ({**OK, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, {}, 400,
     "messages[0].content"),
    ({**OK, "tools": []}, {}, 400, "tools"),
    ({**OK, "logprobs": True}, {}, 400, "logprobs"),
    ({**OK, "temperature": 9}, {}, 400, "temperature"),
    ({**OK, "n": 5}, {}, 400, "n"),
    ({**OK, "stream": "yes"}, {}, 400, "stream"),
    ([1, 2], {}, 400, None),
    # every value is validated at its own level, even when a higher one overrides it
    ({**OK, "optscale": {"alpha": 3}}, {"X-OptScale-Settings": '{"alpha": 0.5}'}, 400, "optscale.alpha"),
    ({**OK, "optscale": {"n_max": 0}}, {"X-OptScale-Settings": '{"n_max": 3}'}, 400, "optscale.n_max"),
    ({**OK, "optscale": {"policy": "magic"}}, {"X-OptScale-Policy": "bon"}, 404, "optscale.policy"),
    ({**OK, "model": "fake-model+magic"}, {"X-OptScale-Policy": "bon"}, 404, "model"),
    ({**OK, "model": "fake-model+magic", "optscale": {"policy": "bon"}}, {}, 404, "model"),
    # booleans are not numbers, strings are neither
    ({**OK, "optscale": {"n_max": True}}, {}, 400, "optscale.n_max"),
    ({**OK, "optscale": {"alpha": True}}, {}, 400, "optscale.alpha"),
    ({**OK, "optscale": {"alpha": "0.5"}}, {}, 400, "optscale.alpha"),
    ({**OK, "optscale": {"deadline_s": True}}, {}, 400, "optscale.deadline_s"),
    ({**OK, "optscale": {"return_samples": 1}}, {}, 400, "optscale.return_samples"),
]


@pytest.mark.parametrize("body,headers,status,param", BAD)
def test_bad_requests_get_their_status_and_a_located_message(proxy, body, headers, status, param):
    r = httpx.post(proxy.url("/v1/chat/completions"), json=body, headers=headers)
    err = r.json()["error"]
    assert r.status_code == status and err["param"] == param, err
    assert err["message"] and err["type"]
    if param and param.startswith("optscale."):
        assert param in err["message"]


def test_malformed_bodies_and_the_server_keeps_serving(proxy, client):
    url = proxy.url("/v1/chat/completions")
    r = httpx.post(url, content=b'{"model": "fake-model",', headers={"content-type": "application/json"})
    assert r.status_code == 400 and "line 1 column" in r.json()["error"]["message"]
    r = httpx.post(url, content=b"\xff\xfe", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = httpx.post(url, content=b"model=x", headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 415 and r.json()["error"]["param"] == "Content-Type"
    big = json.dumps({**OK, "user": "x" * (proxy.config.max_body_bytes + 1)})
    r = httpx.post(url, content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
    assert httpx.get(proxy.url("/v1/nowhere")).json()["error"]["code"] == "not_found"
    r = client.chat.completions.create(model="fake-model", messages=MESSAGES)  # still serving
    assert r.choices[0].message.content


# -- the other endpoints ---------------------------------------------------------------------------
def test_models_policies_plan_health_ready(proxy, client):
    ids = [m.id for m in client.models.list()]
    assert ids[0] == "fake-model" and {f"fake-model+{p}" for p in POLICIES.names()} <= set(ids)
    listed = httpx.get(proxy.url("/v1/optscale/policies")).json()["data"]
    assert [p["id"] for p in listed] == list(POLICIES.names())
    schema = {p["id"]: p["settings_schema"] for p in listed}
    assert "alpha" in schema["optscale"]["properties"] and "priors" not in schema["optscale"]["properties"]
    for name, scores in (("optscale0", [0.8, 0.85, 0.82, 0.9, 0.7, 0.95]), ("optscale", [0.8]), ("bon", [0.3, 0.9])):
        settings = {"s_min": 0.9} if name != "bon" else {}
        plan = httpx.post(proxy.url("/v1/optscale/plan"), json={"policy": name, "n_max": 16, **settings,
                                                                "scores": scores}).json()
        # what the policy's own episode says on these scores, and nothing computed beside it
        episode = build_policy(name, 16, settings).start(Problem(id="plan"))
        decisions = [episode.observe(Sample(x)) for x in scores]
        used = next((i + 1 for i, d in enumerate(decisions) if d is Decision.STOP), len(scores))
        outcome = episode.result()
        assert plan["decision"] == decisions[used - 1].value and plan["n_observed"] == used, (name, plan)
        assert plan["n_star"] == outcome.estimates.get("n_star") and plan["chosen_index"] == outcome.chosen
        assert plan["stop_reason"] == outcome.stop_reason and plan["settings"] == {
            **build_policy(name, 16, settings).model_dump(mode="json", exclude={"priors"})}
    assert plan["n_star"] is None  # Best-of-N has none
    bad = httpx.post(proxy.url("/v1/optscale/plan"), json={"scores": [0.5], "deadline_s": 3})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "deadline_s"
    bad = httpx.post(proxy.url("/v1/optscale/plan"), json={"scores": [0.5], "return_samples": True})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "return_samples"
    bad = httpx.post(proxy.url("/v1/optscale/plan"), json={"scores": [0.5, 2]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "scores[1]"
    bad = httpx.post(proxy.url("/v1/optscale/plan"), json={"scores": [0.5], "alpha": 3})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "alpha"
    assert httpx.get(proxy.url("/health")).json() == {"status": "ok"}
    assert httpx.get(proxy.url("/ready")).status_code == 200


def test_metrics_are_exposed_under_their_names(proxy, client):
    client.chat.completions.create(model="fake-model", messages=MESSAGES)
    text = httpx.get(proxy.url("/metrics")).text
    for name in ("optscale_requests_total", "optscale_request_duration_seconds", "optscale_samples_used",
                 "optscale_samples_launched_total", "optscale_samples_cancelled_total",
                 "optscale_stop_reason_total", "optscale_upstream_tokens_total", "optscale_scorer_requests_total",
                 "optscale_inflight_samples", "optscale_fit_failures_total"):
        assert f"# TYPE {name.removesuffix('_total')}" in text, name
    assert 'optscale_requests_total{model="fake-model",policy="optscale",status="200"}' in text
    assert 'optscale_scorer_requests_total{model="fake-model",status="ok"}' in text
    assert 'optscale_upstream_tokens_total{kind="completion",model="fake-model"}' in text


# -- limits, deadlines, failures, disconnects ------------------------------------------------------
def test_disconnect_cancels_the_episode_and_closes_every_upstream_stream():
    config = fakes.FakeConfig(token_latency=0.01, min_tokens=300, max_tokens=400)
    with fakes.FakeServer(config) as up, Proxy(up.base_url, n_max=4, in_flight=4) as px:
        before = len(up.served)
        with pytest.raises(httpx.ReadTimeout):  # the client gives up mid-episode
            httpx.post(px.url("/v1/chat/completions"), json={**OK, "optscale": {"policy": "bon"}}, timeout=1.0)
        up.wait_disconnected(4)
        wait_for(lambda: px.service.limiter.in_use == 0 and px.service.gate.active == 0, what="slots freed")
        assert len(up.served) - before == 4 and all(r.disconnected for r in up.served[before:])
        text = httpx.get(px.url("/metrics")).text
        assert 'optscale_samples_cancelled_total{model="fake-model",policy="bon"} 4.0' in text
        cancelled = float(text.split('optscale_upstream_tokens_total{kind="cancelled",model="fake-model"} ')[1]
                          .split()[0])
        assert 0 < cancelled <= sum(r.sent for r in up.served[before:])

        before = len(up.served)
        with httpx.stream("POST", px.url("/v1/chat/completions"), json={**OK, "stream": True}, timeout=10) as r:
            lines = r.iter_lines()  # kept: a dropped iterator closes the connection
            assert next(lines).startswith(":")  # sampling has begun
            wait_for(lambda: len(up.served) - before >= 3, what="samples launched")
        up.wait_disconnected(4 + 3)
        wait_for(lambda: px.service.limiter.in_use == 0 and px.service.gate.active == 0, what="slots freed")


def test_usage_counts_cancelled_partial_streams():
    config = fakes.FakeConfig(min_tokens=5, max_tokens=300, token_latency=0.002, seed=1)
    with fakes.FakeServer(config) as up, Proxy(up.base_url, n_max=8, in_flight=8) as px:
        c = openai.OpenAI(base_url=px.base_url, api_key="x", max_retries=0)
        before, start = up.sent_tokens(), len(up.served)
        r = c.chat.completions.create(model="fake-model", messages=MESSAGES, extra_body={"optscale": {
            "policy": "bon", "deadline_s": 0.3, "return_samples": True}})
        o = r.model_extra["optscale"]
        assert o["n_used"] < o["n_launched"] == 8 and o["n_cancelled"] >= 1
        up.wait_disconnected(1)
        sent = up.sent_tokens() - before
        b = o["usage_breakdown"]
        assert b["cancelled_completion_tokens"] > 0
        assert r.usage.completion_tokens == sum(b[k] for k in ("generation_completion_tokens",
                                                                 "cancelled_completion_tokens",
                                                                 "failed_completion_tokens"))
        # every counted token was sent; the upstream writes a few more before it notices a closed socket
        assert r.usage.completion_tokens <= sent <= r.usage.completion_tokens + 25 * o["n_cancelled"]
        assert len(up.served) - start == 8


def test_max_episodes_answers_429_with_retry_after():
    with fakes.FakeServer(fakes.FakeConfig(token_latency=0.01, min_tokens=100, max_tokens=100)) as up, \
            Proxy(up.base_url, n_max=2, max_episodes=1) as px:
        c = openai.OpenAI(base_url=px.base_url, api_key="x", max_retries=0)
        first = threading.Thread(target=lambda: c.chat.completions.create(model="fake-model", messages=MESSAGES))
        first.start()
        wait_for(lambda: px.service.gate.active == 1, what="first episode admitted")
        with pytest.raises(openai.RateLimitError) as err:
            c.chat.completions.create(model="fake-model", messages=MESSAGES)
        assert err.value.response.headers["retry-after"] == "1"
        assert err.value.body["code"] == "too_many_episodes"
        first.join(30)
        assert c.chat.completions.create(model="fake-model", messages=MESSAGES).choices


def test_deadline_answers_best_so_far_or_504():
    # One sample answers, the other seven never do (and are not retried within the deadline: the idle timeout is
    # longer): the deadline, not the machine's speed, ends the episode.
    config = fakes.FakeConfig(min_tokens=5, max_tokens=400, token_latency=0.005, seed=2)
    client = {"backoff": 0.01, "backoff_max": 0.05, "idle_timeout": 30, "timeout": 60, "retries": 2}
    with fakes.FakeServer(config) as up, Proxy(up.base_url, n_max=8, in_flight=8, client=client) as px:
        up.config.faults.extend([None] + ["hang_start"] * 7)  # after the readiness checks' requests
        c = openai.OpenAI(base_url=px.base_url, api_key="x", max_retries=0)
        r = c.chat.completions.create(model="fake-model", messages=MESSAGES,
                                      extra_body={"optscale": {"policy": "bon", "deadline_s": 5}})
        o = r.model_extra["optscale"]
        assert o["stop_reason"] == "deadline" and o["n_used"] == 1 and o["n_cancelled"] == 7
        assert 5 <= o["timings"]["total_s"] < 10
        up.config.faults.extend(["hang_start"] * 4)
        with pytest.raises(openai.APIStatusError) as err:
            c.chat.completions.create(model="fake-model", messages=MESSAGES,
                                      extra_body={"optscale": {"policy": "bon", "n_max": 4, "deadline_s": 0.3}})
        assert err.value.status_code == 504 and err.value.body["param"] == "optscale.deadline_s"
        r = c.chat.completions.create(model="fake-model", messages=MESSAGES, extra_body={"optscale": {
            "policy": "bon", "max_total_tokens": 1200, "return_samples": True}})
        o = r.model_extra["optscale"]
        assert o["stop_reason"] == "max_total_tokens" and 1 <= o["n_used"] < 8
        spent = r.usage.completion_tokens
        assert 1200 <= spent <= 1200 + 8 * 40  # stopped within a poll of the streams (a few tokens each)


def test_upstream_failure_is_502_and_a_stream_error_event():
    config = fakes.FakeConfig(fail_keys=("bad",))
    with fakes.FakeServer(config) as up, Proxy(up.base_url, n_max=2) as px:
        c = openai.OpenAI(base_url=px.base_url, api_key="x", max_retries=0)
        bad = [{"role": "user", "content": "Problem bad: ?"}]
        with pytest.raises(openai.APIStatusError) as err:
            c.chat.completions.create(model="fake-model", messages=bad)
        assert err.value.status_code == 502 and "500" in err.value.body["message"]
        with pytest.raises(openai.APIError, match="upstream failure"):
            list(c.chat.completions.create(model="fake-model", messages=bad, stream=True))
        assert c.chat.completions.create(model="fake-model", messages=MESSAGES).choices  # still serving


def test_not_ready_is_503():
    with Proxy("http://127.0.0.1:9/v1", wait_ready=False) as px:
        r = httpx.get(px.url("/ready"))
        assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready"
        r = httpx.post(px.url("/v1/chat/completions"), json=OK)
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert httpx.get(px.url("/health")).status_code == 200


# -- auth and idempotency ------------------------------------------------------------------------
def test_client_keys_are_checked_and_never_forwarded(tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text("# clients\nclient-key-1\n\nclient-key-2\n")
    with fakes.FakeServer() as up, Proxy(up.base_url, n_max=2, api_keys_file=str(keys),
                                         api_key="upstream-secret") as px:
        for key, status in ((None, 401), ("wrong", 401), ("client-key-2", 200)):
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            r = httpx.post(px.url("/v1/chat/completions"), json=OK, headers=headers)
            assert r.status_code == status, r.text
        assert r.json()["choices"]
        assert httpx.get(px.url("/v1/models")).status_code == 401
        sent = {a for _, a in up.auth}
        assert sent == {"Bearer upstream-secret"}
        c = openai.OpenAI(base_url=px.base_url, api_key="nope", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            c.chat.completions.create(model="fake-model", messages=MESSAGES)


def test_idempotency_key_returns_the_stored_result_without_sampling_again(upstream, proxy):
    url, key = proxy.url("/v1/chat/completions"), {"Idempotency-Key": f"k-{random.random()}"}
    first = httpx.post(url, json=OK, headers=key)
    served = len(upstream.served)
    again = httpx.post(url, json=OK, headers=key)
    assert again.status_code == 200 and again.json() == first.json() and len(upstream.served) == served
    other = httpx.post(url, json={**OK, "temperature": 0.1}, headers=key)
    assert other.status_code == 400 and other.json()["error"]["param"] == "Idempotency-Key"


# -- the same decisions as offline replay -----------------------------------------------------------
PRIORS = ConstantPriors(0.7, 0.2, 0.1, 0.05)


def fitted_table(directory, n_max: int = 8, name: str = "t8.json"):
    """A stopping table fitted on a toy calibration pool, saved as ``directory/name``."""
    directory.mkdir(exist_ok=True)
    calib = build_batch(toy_pool(problems=80, samples=n_max, seed=5), orders=3, seed=1)
    return fit_table(calib, n_max, budget=0.3).save(directory / name)


@pytest.mark.parametrize("name", POLICIES.names())
def test_proxy_decisions_equal_offline_replay(name, tmp_path):
    """Samples recorded through the proxy, replayed offline, give the same stop and the same choice."""
    settings = {"priors": PRIORS} if name == "optscale-t" else {}
    server = {"policy": name, "policy_settings": settings}
    request = {}
    if name == "learned":  # a fitted table, named by the request among the server's tables
        settings = {"table": str(fitted_table(tmp_path / "tables"))}
        server = {"policy": "bon", "tables_dir": str(tmp_path / "tables")}
        request = {"policy": "learned", "table": "t8.json"}
    config = fakes.FakeConfig(seed=11, min_tokens=8, max_tokens=16)
    questions = (Q, "Problem p12: how many?")  # a hard problem and an easy one (low and high scores)
    with fakes.FakeServer(config) as up, Proxy(up.base_url, n_max=8, in_flight=1, **server) as px:
        c = openai.OpenAI(base_url=px.base_url, api_key="x", max_retries=0)

        def record(question, **options):
            up._rng = random.Random(11)  # the same draws for both requests
            r = c.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": question}],
                                          extra_body={"optscale": {"return_samples": True, **options}})
            return r.model_extra["optscale"]

        runs = [(q, record(q, **request), record(q, policy="bon", n_max=8)) for q in questions]
    for i, (question, live, full) in enumerate(runs):
        assert live["policy"] == name and live["settings"].get("table") == request.get("table")
        samples = full["samples"]
        assert [s["text"] for s in live["samples"]] == [s["text"] for s in samples[:live["n_used"]]]
        problem = SimpleNamespace(id=f"q{i}", question=question, samples=[
            SimpleNamespace(score=s["score"], answer=s["answer"], tokens=s["tokens"], correct=False)
            for s in samples])
        decisions = build_policy(name, 8, settings).replay(build_batch([problem]))
        assert live["n_used"] == decisions.n_used[0, 0], question
        assert live["chosen_index"] == decisions.chosen[0, 0], question
    if name == "learned":  # the table decides something on these samples (it stops early on the easy one)
        assert runs[1][1]["n_used"] < 8


def test_a_request_names_a_table_of_the_servers_tables_dir_never_a_path(upstream, tmp_path):
    tables = tmp_path / "tables"
    fitted_table(tables)
    fitted_table(tables, n_max=4, name="t4.json")
    (tmp_path / "outside.json").write_text(fitted_table(tmp_path / "other").read_text())
    (tables / "link.json").symlink_to(tmp_path / "outside.json")
    with Proxy(upstream.base_url, n_max=8, tables_dir=str(tables)) as px:
        url = px.url("/v1/chat/completions")

        def ask(table, **extra):
            return httpx.post(url, json={**OK, "optscale": {"policy": "learned", "table": table, **extra}})

        r = ask("t8.json")
        assert r.status_code == 200 and r.json()["optscale"]["settings"]["table"] == "t8.json"
        for name in ("../outside.json", "/etc/passwd", "sub/t8.json", ".t8.json", 8, ["t8.json"]):
            err = ask(name).json()["error"]
            assert err["param"] == "optscale.table" and "no path" in err["message"], (name, err)
        for name in ("link.json", "nope.json"):  # a link out of the directory, a missing table
            err = ask(name).json()["error"]
            assert err["param"] == "optscale.table" and "no stopping table" in err["message"], (name, err)
            assert "tables: t4.json, t8.json)" in err["message"] and str(tmp_path) not in err["message"]
        err = ask("t4.json").json()["error"]  # fitted for another n_max: refused, without the server's path
        assert err["param"] == "optscale.table" and "t4.json was fitted for n_max 4, not 8" in err["message"]
        assert str(tables) not in err["message"]
        assert ask("t4.json", n_max=4).status_code == 200
        r = httpx.post(url, json=OK, headers={"X-OptScale-Policy": "learned",
                                              "X-OptScale-Settings": json.dumps({"table": "../outside.json"})})
        assert r.status_code == 400 and r.json()["error"]["param"] == "X-OptScale-Settings.table"
        listed = httpx.get(px.url("/v1/optscale/policies")).json()
        assert listed["tables"] == ["t4.json", "t8.json"]  # the link out of the directory is not listed
        learned = {p["id"]: p for p in listed["data"]}["learned"]["settings_schema"]
        assert learned["properties"]["table"]["type"] == "string"
        assert "priors" not in {p["id"]: p for p in listed["data"]}["optscale"]["settings_schema"]["properties"]
    with pytest.raises(InputError, match="not a directory") as info:
        build_serve_config({"upstream": "http://x/v1", "model": "m", "scorer": "confidence",
                            "tables_dir": str(tmp_path / "none")}, env={})
    assert info.value.where == "tables_dir"


# -- parts -----------------------------------------------------------------------------------------
def test_fair_limiter_takes_turns_between_episodes():
    async def go():
        limiter = FairLimiter(1)
        a, b = limiter.lane(), limiter.lane()
        order = []

        async def take(lane, name, hold):
            async with lane:
                order.append(name)
                await hold.wait()

        gates = [asyncio.Event() for _ in range(4)]
        tasks = [asyncio.create_task(take(a, f"a{i}", gates[i])) for i in range(3)]
        await asyncio.sleep(0)
        tasks.append(asyncio.create_task(take(b, "b0", gates[3])))
        for gate in gates:
            await asyncio.sleep(0)
            gate.set()
        await asyncio.gather(*tasks)
        assert limiter.in_use == 0
        return order

    # b0 queued after a1 and a2 but is served before a2: the freed slot goes to the other lane's turn
    assert asyncio.run(go()) == ["a0", "a1", "b0", "a2"]


def test_config_file_flags_and_located_errors(tmp_path):
    path = tmp_path / "serve.toml"
    path.write_text('upstream = "http://127.0.0.1:1/v1"\nmodel = "m"\nscorer = "confidence"\nmax_episodes = 3\n'
                    "temperature = 0.2\n[client]\nbackoff = 1\n")
    config = build_serve_config(flag_values={"max_episodes": 5}, config_file=str(path), env={})
    assert config.max_episodes == 5 and config.generation.temperature == 0.2 and config.client.backoff == 1
    assert config.client.retries == 2 and config.host == "127.0.0.1"
    env = {"OPTSCALE_UPSTREAM_API_KEY": "up-key"}
    assert build_serve_config(config_file=str(path), env=env).client.api_key.get_secret_value() == "up-key"
    with pytest.raises(InputError, match="policy_settings.alpha"):
        build_serve_config(flag_values={"policy_settings": {"alpha": 3}}, config_file=str(path), env={})
    with pytest.raises(InputError, match="unknown setting 'colour'"):
        build_serve_config(flag_values={"colour": 1}, config_file=str(path), env={})


# -- regressions of the review ---------------------------------------------------------------------
def raw_upload(port: int, declared: int, sent: bytes, path: str = "/v1/chat/completions",
               request_id: str = "raw-upload") -> socket.socket:
    """A client that declares ``declared`` body bytes and sends only ``sent`` (a slow or leaving upload)."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 f"X-Request-Id: {request_id}\r\nContent-Length: {declared}\r\n\r\n".encode() + sent)
    return sock


def request_logs(caplog, rid: str) -> list[logging.LogRecord]:
    """The serve's log records of one request (its access line and any line naming its id)."""
    return [r for r in caplog.records if r.name.startswith("optscale.serve")
            and (getattr(r, "fields", {}).get("request_id") == rid or rid in r.getMessage())]


def test_readiness_comes_back_after_a_failed_check():
    with fakes.FakeServer() as up, Proxy(up.base_url, n_max=2, ready_ttl_s=0.05) as px:
        def outlive_the_last_check():  # the next /ready or request checks the upstream again
            service = px.service
            wait_for(lambda: time.monotonic() - service.checked_at > px.config.ready_ttl_s, what="a stale check")

        up.config.models = ("other-model",)  # the upstream stops serving the model
        outlive_the_last_check()
        r = httpx.get(px.url("/ready"))
        assert r.status_code == 503 and "does not serve" in r.json()["error"]["message"]
        assert "127.0.0.1" not in r.text and up.base_url not in r.text  # the upstream's URL stays in the log
        assert httpx.post(px.url("/v1/chat/completions"), json=OK).status_code == 503
        up.config.models = (fakes.MODEL,)  # back
        outlive_the_last_check()
        assert httpx.post(px.url("/v1/chat/completions"), json=OK).status_code == 200  # a request re-checks
        up.config.models = ("other-model",)
        outlive_the_last_check()
        assert httpx.get(px.url("/ready")).status_code == 503
        up.config.models = (fakes.MODEL,)
        outlive_the_last_check()
        assert httpx.get(px.url("/ready")).status_code == 200  # and so does /ready


def test_a_client_leaving_mid_upload_is_a_499_without_a_traceback(upstream, caplog):
    caplog.set_level(logging.INFO, logger="optscale.serve")
    with Proxy(upstream.base_url, n_max=2) as px:  # its own proxy: no other test's request logs here
        rid = f"leaves-{random.random()}"
        raw_upload(px.port, 1000, b'{"model": "fake-', request_id=rid).close()
        wait_for(lambda: request_logs(caplog, rid), what="the access line")
        px.wait_idle()  # the request has ended: all it logs is logged
    [line] = request_logs(caplog, rid)
    assert line.name == "optscale.serve.access" and line.fields["status"] == 499, line.getMessage()
    assert not any(r.exc_info for r in caplog.records), [r.getMessage() for r in caplog.records if r.exc_info]


def test_slow_uploads_time_out_and_concurrent_uploads_are_bounded(upstream):
    with Proxy(upstream.base_url, n_max=2, body_timeout_s=1.0, max_body_reads=1, limit_concurrency=4) as px:
        slow = raw_upload(px.port, 1000, b'{"model":')

        def second_upload():  # while the first stalls; answered (200) until the server reads the first
            r = httpx.post(px.url("/v1/chat/completions"), json=OK)
            return r if r.status_code != 200 else None

        r = wait_for(second_upload, what="the first upload to take the one body slot")
        assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_uploads" and r.headers["retry-after"]
        slow.settimeout(5)
        start = time.monotonic()
        answer = ""
        while "}}" not in answer:
            answer += slow.recv(4096).decode()
        assert answer.startswith("HTTP/1.1 408") and "body_timeout_s" in answer and time.monotonic() - start < 2
        slow.close()
        assert httpx.post(px.url("/v1/chat/completions"), json=OK).status_code == 200
        idle = [socket.create_connection(("127.0.0.1", px.port)) for _ in range(4)]  # limit_concurrency: 4
        try:
            # refused once the server has taken the idle connections (a limit never enforced times out)
            wait_for(lambda: httpx.get(px.url("/health")).status_code == 503, what="/health refused at the limit")
        finally:
            for sock in idle:
                sock.close()


def test_a_question_the_prior_refuses_is_400_and_plan_takes_a_question(proxy):
    url = proxy.url("/v1/chat/completions")
    r = httpx.post(url, timeout=60, json={**OK, "messages": [{"role": "system", "content": "x"},
                                                               {"role": "user", "content": ""}],
                                           "optscale": {"policy": "optscale-t"}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages[1].content", r.text
    plan = {"policy": "optscale-t", "scores": [0.8, 0.9]}
    r = httpx.post(proxy.url("/v1/optscale/plan"), json=plan, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "question", r.text
    r = httpx.post(proxy.url("/v1/optscale/plan"), json={**plan, "question": Q}, timeout=60)
    assert r.status_code == 200 and r.json()["n_observed"] == 2, r.text


class SlowPriors(ConstantPriors):
    """Priors that take as long as the test wants (as a predictor does on a cold question): each call
    sets ``entered`` and waits for ``release``."""

    def __init__(self, *args):
        super().__init__(*args)
        self.entered, self.release = threading.Event(), threading.Event()

    def priors(self, ids, questions, meta=None):
        self.entered.set()
        assert self.release.wait(30), "never released"
        return super().priors(ids, questions, meta)


def test_an_episode_start_does_not_stall_the_event_loop(upstream):
    slow = SlowPriors(0.7, 0.2, 0.1, 0.05)
    with Proxy(upstream.base_url, n_max=2, policy="optscale-t", policy_settings={"priors": slow}) as px:
        answers = []
        worker = threading.Thread(target=lambda: answers.append(
            httpx.post(px.url("/v1/chat/completions"), json=OK, timeout=30)))
        worker.start()
        try:
            assert slow.entered.wait(10), "the episode never asked for its priors"
            # the priors are still being computed: on a stalled loop /health would not answer at all
            assert httpx.get(px.url("/health"), timeout=10).status_code == 200
        finally:
            slow.release.set()
            worker.join(30)
    assert answers[0].status_code == 200, answers[0].text


def test_a_reused_idempotency_key_on_a_stream_is_a_400_before_the_stream(proxy):
    url, key = proxy.url("/v1/chat/completions"), {"Idempotency-Key": f"s-{random.random()}"}
    assert httpx.post(url, json=OK, headers=key).status_code == 200
    r = httpx.post(url, json={**OK, "stream": True}, headers=key)
    assert r.status_code == 400 and r.json()["error"]["param"] == "Idempotency-Key"


def test_unknown_prompt_size_is_said_and_counted_per_attempt():
    with fakes.FakeServer(fakes.FakeConfig(usage_in_stream=False)) as up, Proxy(up.base_url, n_max=2) as px:
        r = httpx.post(px.url("/v1/chat/completions"), json=OK).json()
        assert r["usage"]["prompt_tokens"] == 0 and r["optscale"]["usage_breakdown"]["prompt_tokens"] is None
        assert r["optscale"]["usage_unknown"] == ["prompt_tokens"]
    with fakes.FakeServer() as up, Proxy(up.base_url, n_max=2) as px:
        r = httpx.post(px.url("/v1/chat/completions"), json=OK).json()
        assert r["usage"]["prompt_tokens"] == 2 * len(Q.split()) and r["optscale"]["usage_unknown"] == []


def test_models_lists_the_upstreams_models_and_the_aliases():
    with fakes.FakeServer(fakes.FakeConfig(models=(fakes.MODEL, "other-model"))) as up, \
            Proxy(up.base_url, n_max=2) as px:
        ids = [m["id"] for m in httpx.get(px.url("/v1/models")).json()["data"]]
        assert ids[:2] == ["fake-model", "other-model"] and f"fake-model+{POLICIES.names()[0]}" in ids
    with Proxy("http://127.0.0.1:9/v1", wait_ready=False) as px:  # the upstream is down: the configured names
        ids = [m["id"] for m in httpx.get(px.url("/v1/models")).json()["data"]]
        assert ids == ["fake-model"] + [f"fake-model+{p}" for p in POLICIES.names()]


def test_neutral_openai_fields_are_accepted_and_others_refused(proxy):
    url = proxy.url("/v1/chat/completions")
    neutral = {"presence_penalty": 0, "frequency_penalty": 0.0, "logprobs": False, "response_format": {"type": "text"},
               "store": False, "metadata": {}, "parallel_tool_calls": True, "user": "u1", "logit_bias": {}}
    r = httpx.post(url, json={**OK, **neutral, "optscale": {"policy": "bon", "n_max": 1}})
    assert r.status_code == 200, r.text
    for field, value in (("presence_penalty", 0.5), ("frequency_penalty", False), ("logprobs", True),
                         ("response_format", {"type": "json_object"}), ("store", True), ("metadata", {"a": "b"})):
        r = httpx.post(url, json={**OK, field: value})
        assert r.status_code == 400 and r.json()["error"]["param"] == field, (field, r.text)


def test_max_total_tokens_is_a_tight_bound():
    config = fakes.FakeConfig(min_tokens=50, max_tokens=50)  # every sample is 50 tokens, at once
    with fakes.FakeServer(config) as up, Proxy(up.base_url, n_max=16, in_flight=8, max_n_max=16) as px:
        for cap in (300, 320, 60):
            r = httpx.post(px.url("/v1/chat/completions"), json={**OK, "max_tokens": 50, "optscale": {
                "policy": "bon", "max_total_tokens": cap}}).json()
            o = r.get("optscale", r)
            assert o.get("stop_reason") == "max_total_tokens", o
            # The documented bound: the cap plus one sample's max_tokens. (A stream cut at the cap may
            # end mid-sample under load, so the total need not be a whole number of samples.)
            used = r["usage"]["completion_tokens"]
            assert cap <= used <= cap + 50, (cap, used, o)


def test_a_sample_that_streamed_all_its_max_tokens_is_not_cancelled_at_the_cap():
    """A cap of exactly 6 x max_tokens: the 6 samples reach it with only their ends left to send, and
    are kept (they were once cancelled there, answering 400 'spent before any sample finished')."""
    config = fakes.FakeConfig(min_tokens=50, max_tokens=50, end_latency=0.3)
    with fakes.FakeServer(config) as up, Proxy(up.base_url, n_max=16, in_flight=8, max_n_max=16) as px:
        r = httpx.post(px.url("/v1/chat/completions"), json={**OK, "max_tokens": 50, "optscale": {
            "policy": "bon", "max_total_tokens": 300}}, timeout=20)
        assert r.status_code == 200, r.text
        o = r.json()["optscale"]
        assert o["stop_reason"] == "max_total_tokens" and o["n_used"] == 6 and o["n_cancelled"] == 0, o
        assert r.json()["usage"]["completion_tokens"] == 300


def test_small_contract_points(proxy, upstream):
    r = httpx.get(proxy.url("/v1/chat/completions"))
    assert r.status_code == 405 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(proxy.url("/v1/chat/completions"), json={**OK, "stop": 5})
    assert r.status_code == 400 and r.json()["error"]["param"] == "stop"
    listed = httpx.get(proxy.url("/v1/optscale/policies")).json()["data"]
    for p in listed:
        assert {"policy", "n_max", "deadline_s", "max_total_tokens", "return_samples"} <= set(
            p["settings_schema"]["properties"]), p["id"]


def test_the_access_log_line_has_the_documented_fields(proxy, caplog):
    caplog.set_level(logging.INFO, logger="optscale.serve")
    rid = f"access-{random.random()}"  # the line is written once the response has gone: found by its id
    httpx.post(proxy.url("/v1/chat/completions"), json={**OK, "optscale": {"policy": "bon"}},
               headers={"X-Request-Id": rid})
    wait_for(lambda: request_logs(caplog, rid), what="the access line")
    [record] = request_logs(caplog, rid)
    line = record.getMessage()
    assert record.name == "optscale.serve.access" and f"{rid} POST /v1/chat/completions 200" in line, line
    for field in ("policy=bon", "n_used=4", "stop_reason=n_max", "completion_tokens="):
        assert field in line, line


def test_the_idempotency_store_is_bounded_in_bytes():
    async def go():
        store = IdempotencyStore(60, 100, max_bytes=1000, size=len)
        for i in range(3):
            async def work(i=i):
                return "x" * 400
            await store.run("c", f"k{i}", "f", work)
        return store

    store = asyncio.run(go())
    assert len(store) == 2 and store.bytes == 800
