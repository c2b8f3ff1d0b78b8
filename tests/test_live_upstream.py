"""The live transport against an upstream that keeps failing, rate limits, or is slower than its pool."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from optscale.live import ClientSettings, EndpointPool, GenerationSettings, OpenAIGenerator, Prompt, RequestFailed

PROMPT = Prompt(messages=({"role": "user", "content": "Say OK."},), text="Say OK.")


def test_an_endpoint_failing_for_ever_rests_rest_max_and_never_overflows():
    pool = EndpointPool(["http://127.0.0.1:9/v1"], rest=1.0, rest_max=30.0)
    endpoint = pool.endpoints[0]
    endpoint.failures = 10_000  # as after that many consecutive failures (1,030 overflowed 2**excess)
    pool.release(pool.acquire(), False)
    assert endpoint.failures == 10_001
    assert 29 < endpoint.down_until - time.monotonic() <= 30.0


def _rate_limited(retry_after: str, calls: list[float]) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(time.monotonic())
        return httpx.Response(429, json={"error": {"message": "slow down"}}, headers={"retry-after": retry_after})

    return httpx.MockTransport(handler)


def _generate(transport: httpx.AsyncBaseTransport, client: ClientSettings):
    async def go():
        async with OpenAIGenerator("http://upstream:1/v1", "m", GenerationSettings(max_tokens=4), client=client,
                                   transport=transport) as g:
            return await g.generate(PROMPT)

    return asyncio.run(go())


def test_a_retry_after_longer_than_backoff_max_fails_at_once_and_says_when_to_come_back():
    """Retrying before the server's Retry-After only earns another 429: the request fails with its advice."""
    calls: list[float] = []
    with pytest.raises(RequestFailed) as err:
        _generate(_rate_limited("30", calls), ClientSettings(retries=3, backoff=0.01, backoff_max=1.0))
    assert len(calls) == 1
    assert err.value.status == 429 and err.value.attempts == 1 and 29 <= err.value.retry_after <= 30
    assert "retry after 30 s" in str(err.value) and "backoff_max" in str(err.value)


def test_a_short_retry_after_is_waited_for_before_each_retry():
    calls: list[float] = []
    with pytest.raises(RequestFailed) as err:
        _generate(_rate_limited("0.2", calls), ClientSettings(retries=2, backoff=0.0, backoff_max=1.0))
    assert len(calls) == 3 and all(b - a >= 0.2 for a, b in zip(calls, calls[1:]))
    assert err.value.status == 429 and err.value.attempts == 3 and err.value.retry_after == pytest.approx(0.2)
