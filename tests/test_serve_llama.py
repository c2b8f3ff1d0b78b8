"""``optscale serve`` in front of the real llama.cpp server on SmolLM2-135M, with the official openai client.

The server is started once for this module on a free port of 127.0.0.1 (``pip install '.[local]'``).
SmolLM2 on two CPU cores is slow, so the requests are few and short (24 tokens, n_max 2 to 4):
the point is the real wire format (llama.cpp's streamed chunks without usage, its logprobs, its
judge replies), not the model's answers.
"""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest

from conftest import need_module

need_module("llama_cpp", "llama-cpp-python (the local extra) is not installed")

from serve_fakes import Proxy  # noqa: E402

from optscale.live.local import MODEL_ALIAS, LocalServer  # noqa: E402
from optscale.live.scorers import JUDGE_PROMPT  # noqa: E402

pytestmark = pytest.mark.slow

MAX_TOKENS = 24
QUESTION = "What is 2 + 3? Put the final answer in \\boxed{}."
MESSAGES = [{"role": "user", "content": QUESTION}]


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    log = tmp_path_factory.mktemp("llama") / "server.log"
    with LocalServer(log=log, ready_timeout=180) as server:
        yield server


def proxy(llama, scorer: str, **settings):
    return Proxy(llama.base_url, model=MODEL_ALIAS, scorer=scorer, n_max=2, max_tokens=MAX_TOKENS, temperature=0.8,
                 in_flight=2, ready_timeout=120, client={"timeout": 120, "idle_timeout": 60, "retries": 1}, **settings)


def check_samples(o: dict) -> list[dict]:
    """Every used sample is a real, honestly counted, validly scored response."""
    used = [s for s in o["samples"] if s["status"] == "used"]
    assert len(used) == o["n_used"] >= 1
    for s in used:
        assert 0 < s["tokens"] <= MAX_TOKENS and s["finish_reason"] in ("stop", "length")
        assert 0.0 <= s["score"] <= 1.0 and s["text"]
        assert s["flag"] in (None, "no_answer"), s["flag"]  # no invalid logprobs from a real server
    return used


def test_confidence_scorer_sync_streaming_and_async(llama):
    with proxy(llama, "confidence") as px:
        client = openai.OpenAI(base_url=px.base_url, api_key="unused", max_retries=0, timeout=120)
        r = client.chat.completions.create(model=MODEL_ALIAS, messages=MESSAGES,
                                           extra_body={"optscale": {"policy": "bon", "return_samples": True}})
        o = r.model_extra["optscale"]
        used = check_samples(o)
        assert o["policy"] == "bon" and o["n_used"] == 2 == o["n_launched"] and o["stop_reason"] == "n_max"
        best = max(range(2), key=lambda i: used[i]["score"])
        assert r.choices[0].message.content == used[best]["text"] and o["chosen_index"] == best
        assert r.choices[0].finish_reason == used[best]["finish_reason"]
        # llama.cpp streams no usage: each token is counted from its logprob entry, and the sum is the usage
        assert r.usage.completion_tokens == sum(s["tokens"] for s in used) == \
            o["usage_breakdown"]["generation_completion_tokens"]
        assert o["usage_breakdown"]["scorer_tokens"] == 0  # the confidence scorer calls no model
        assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens

        # the adaptive default policy, streamed, with a usage chunk
        chunks = list(client.chat.completions.create(
            model=MODEL_ALIAS, messages=MESSAGES, stream=True, stream_options={"include_usage": True},
            extra_body={"optscale": {"n_max": 4, "peek": 2, "return_samples": True}}))
        final = [c for c in chunks if c.choices and c.choices[0].finish_reason][0]
        o = final.model_extra["optscale"]
        used = check_samples(o)
        assert o["policy"] == "optscale" and 2 <= o["n_used"] <= 4 and o["stop_reason"] in ("n_star", "n_max")
        assert "mu" in o["estimates"]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == used[o["chosen_index"]]["text"]
        assert chunks[-1].usage.completion_tokens == sum(s["tokens"] for s in used) and not chunks[-1].choices

        async def completion():
            async with openai.AsyncOpenAI(base_url=px.base_url, api_key="x", max_retries=0, timeout=120) as c:
                return await c.completions.create(model=f"{MODEL_ALIAS}+bon", prompt=QUESTION + "\n",
                                                  extra_body={"optscale": {"return_samples": True}})

        r = asyncio.run(completion())
        o = r.model_extra["optscale"]
        used = check_samples(o)
        assert r.object == "text_completion" and r.choices[0].text == used[o["chosen_index"]]["text"]
        assert r.usage.completion_tokens == sum(s["tokens"] for s in used)
        text = httpx.get(px.url("/metrics")).text
        assert f'optscale_requests_total{{model="{MODEL_ALIAS}",policy="bon",status="200"}} 2.0' in text


def test_judge_scorer_reports_the_judges_own_token_usage(llama):
    with proxy(llama, "judge") as px:
        client = openai.OpenAI(base_url=px.base_url, api_key="unused", max_retries=0, timeout=120)
        r = client.chat.completions.create(model=MODEL_ALIAS, messages=MESSAGES,
                                           extra_body={"optscale": {"policy": "bon", "return_samples": True}})
        o = r.model_extra["optscale"]
        used = check_samples(o)
        assert o["n_used"] == 2 and r.choices[0].message.content == used[o["chosen_index"]]["text"]
        assert r.usage.completion_tokens == sum(s["tokens"] for s in used)
        text = httpx.get(px.url("/metrics")).text
        assert f'optscale_scorer_requests_total{{model="{MODEL_ALIAS}",status="ok"}} 2.0' in text

    # What the judge spent, asked of llama.cpp directly with the judge's own request: its usage report.
    expected = 0
    for s in used:
        prompt = JUDGE_PROMPT.replace("{question}", QUESTION).replace("{solution}", s["text"])
        reply = httpx.post(f"{llama.base_url}/chat/completions", timeout=120, json={
            "model": MODEL_ALIAS, "messages": [{"role": "user", "content": prompt}], "max_tokens": 1,
            "temperature": 0.0, "logprobs": True, "top_logprobs": 20}).json()
        expected += reply["usage"]["prompt_tokens"] + reply["usage"]["completion_tokens"]
    assert o["usage_breakdown"]["scorer_tokens"] == expected > 2 * MAX_TOKENS
    assert f'optscale_upstream_tokens_total{{kind="scorer",model="{MODEL_ALIAS}"}} {float(expected)}' in text
