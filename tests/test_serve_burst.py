"""A burst of simultaneous clients is served, not refused: with the default limits, 1,000 requests at once
all get 200 (their upstream requests queued under ``max_in_flight``), on a real uvicorn server."""

from __future__ import annotations

import asyncio
import collections
import time

import httpx
import live_fakes as fakes
import pytest
from serve_fakes import Proxy, wait_for

CLIENTS = 1000
BODY = {"model": "fake-model", "messages": [{"role": "user", "content": "Problem p1: how many?"}],
        "optscale": {"policy": "bon", "n_max": 1}}


@pytest.mark.slow
def test_a_thousand_simultaneous_requests_are_all_answered_with_the_default_limits():
    with fakes.FakeServer(fakes.FakeConfig(min_tokens=4, max_tokens=8)) as up, Proxy(up.base_url) as px:
        defaults = px.config
        assert CLIENTS < min(defaults.max_episodes, defaults.max_body_reads, defaults.limit_concurrency)

        async def burst():
            limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
            async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(300, pool=300)) as client:
                start = asyncio.Event()

                async def one():
                    await start.wait()  # every client sends at once
                    r = await client.post(px.url("/v1/chat/completions"), json=BODY)
                    return r.status_code, r.json().get("error")

                tasks = [asyncio.create_task(one()) for _ in range(CLIENTS)]
                await asyncio.sleep(0)
                start.set()
                return await asyncio.wait_for(asyncio.gather(*tasks), 300)

        began = time.monotonic()
        results = asyncio.run(burst())
        statuses = collections.Counter(status for status, _ in results)
        assert statuses == {200: CLIENTS}, (statuses, [e for s, e in results if s != 200][:3])
        assert time.monotonic() - began < 300
        service = px.service
        wait_for(lambda: service.gate.active == 0 and service.limiter.in_use == 0, what="slots freed")
        assert px.app.state.optscale.bodies.held == 0
