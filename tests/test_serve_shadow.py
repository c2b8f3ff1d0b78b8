"""Shadow sampling (``--shadow-share``), its traffic files (``--traffic-dir``), the savings it measures
(metrics, ``GET /v1/optscale/savings``) and the limiter's background lane that keeps it behind every client."""

from __future__ import annotations

import asyncio
import errno
import gzip
import hashlib
import json
import logging
import math
import os
import random
import signal
import threading

import httpx
import jsonschema
import live_fakes as fakes
import pytest
from prometheus_client.parser import text_string_to_metric_families
from serve_fakes import Proxy, wait_for
from test_serve_shutdown import start_serve

from optscale.answers import normalize_answer
from optscale.errors import InputError
from optscale.cli.serve import SERVE_FLAGS
from optscale.pools import json_schema, read_pool
from optscale.serve import build_serve_config
from optscale.serve import traffic as traffic_module
from optscale.serve.limits import FairLimiter
from optscale.serve.savings import SavingsCounts, savings_report, wilson_interval
from optscale.serve.shadow import chosen_for_shadow
from optscale.serve.traffic import TrafficWriter

MESSAGES = [{"role": "user", "content": "Problem p1: how many?"}]
# one sample, then stop: the shadow has n_max - 1 samples to draw
EARLY = {"model": "fake-model", "messages": MESSAGES,
         "optscale": {"policy": "firstpass", "t": 0.0, "n_max": 4, "return_samples": True}}
BASE = {"upstream": "http://127.0.0.1:9/v1", "model": "m", "scorer": "confidence"}


def metric(proxy, name: str, **labels) -> float:
    """The sum of a metric's samples whose labels include ``labels`` (0 when there is none)."""
    total = 0.0
    for family in text_string_to_metric_families(proxy.service.metrics.render().decode()):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def read_traffic(directory) -> list[dict]:
    """Every record of a traffic folder, files in name order (gzipped or not)."""
    out = []
    for path in sorted(directory.glob("traffic-*.jsonl*")):
        raw = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
        out += [json.loads(line) for line in raw.decode().splitlines()]
    return out


def post(proxy, body=EARLY, timeout: float = 60, **kwargs) -> httpx.Response:
    r = httpx.post(proxy.url("/v1/chat/completions"), json=body, timeout=timeout, **kwargs)
    assert r.status_code == 200, r.text
    return r


# -- choosing requests, bad settings ----------------------------------------------------------------------
def test_the_share_picks_requests_by_a_hash_of_their_id():
    ids = [f"req-{i}" for i in range(4000)]
    assert not any(chosen_for_shadow(i, 0.0) for i in ids) and all(chosen_for_shadow(i, 1.0) for i in ids)
    picked = [i for i in ids if chosen_for_shadow(i, 0.25)]
    assert 0.2 < len(picked) / len(ids) < 0.3
    assert picked == [i for i in ids if chosen_for_shadow(i, 0.25)]  # the same on every replica
    assert set(picked) <= {i for i in ids if chosen_for_shadow(i, 0.5)}


@pytest.mark.parametrize("share", [-0.1, 1.5, True])
def test_a_shadow_share_outside_0_1_is_refused_naming_the_flag(share):
    with pytest.raises(InputError) as info:
        build_serve_config({**BASE, "shadow_share": share}, env={})
    assert info.value.where == "shadow_share"
    assert info.value.renamed(SERVE_FLAGS).where == "--shadow-share"


def test_an_unwritable_traffic_dir_is_refused_at_start_naming_the_flag(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(InputError) as info:
        build_serve_config({**BASE, "traffic_dir": str(blocker / "traffic")}, env={})
    assert info.value.where == "traffic_dir" and "not a writable directory" in info.value.detail
    assert info.value.renamed(SERVE_FLAGS).where == "--traffic-dir"
    made = tmp_path / "new" / "traffic"  # a missing directory is made
    assert build_serve_config({**BASE, "traffic_dir": str(made)}, env={}).traffic_dir == str(made) and made.is_dir()


# -- the limiter's background lane ---------------------------------------------------------------------------
def test_background_requests_take_only_spare_slots_and_yield_to_waiting_episodes():
    async def scenario():
        limiter = FairLimiter(1)
        waits = []
        limiter.on_wait = lambda: waits.append(limiter.in_use)
        order = []
        client = limiter.lane()
        await client.__aenter__()  # a client holds the only slot

        async def background():
            async with limiter.background():
                order.append("background")

        async def other_client():
            async with limiter.lane():
                order.append("client")

        bg = asyncio.create_task(background())
        await asyncio.sleep(0)
        cl = asyncio.create_task(other_client())
        await asyncio.sleep(0)
        assert waits == [1]  # the client that waits is announced (shadow work can make room)
        await client.__aexit__(None, None, None)
        await asyncio.gather(bg, cl)
        assert order == ["client", "background"]  # the client went first though it came later
        async with limiter.background():  # a free slot is taken at once
            assert limiter.in_use == 1
        cancelled = asyncio.create_task(background())
        await client.__aenter__()
        cancelled.cancel()
        await client.__aexit__(None, None, None)
        assert limiter.in_use == 0

    asyncio.run(scenario())


# -- in the proxy ------------------------------------------------------------------------------------------
def test_shadow_sampling_is_off_by_default():
    with fakes.FakeServer(fakes.FakeConfig(seed=5)) as up, Proxy(up.base_url) as px:
        before = len(up.served)
        o = post(px).json()["optscale"]
        assert o["n_used"] == 1 and o["stop_reason"] == "threshold"
        shadow = px.app.state.optscale.shadow
        assert not shadow.queue and not shadow.running and len(up.served) - before == o["n_launched"] == 1
        assert metric(px, "optscale_shadow_episodes_total") == 0


def _answer_without_ids(r: httpx.Response) -> dict:
    body = r.json()
    for key in ("id", "created"):
        body.pop(key)
    body["optscale"].pop("timings")
    return body


def test_with_share_1_the_client_gets_the_same_answer_first_and_the_shadow_samples_on_to_n_max(tmp_path):
    answers = {}
    for share in (0.0, 1.0):
        with fakes.FakeServer(fakes.FakeConfig(seed=11)) as up, Proxy(
                up.base_url, in_flight=1, shadow_share=share, traffic_dir=str(tmp_path / str(share))) as px:
            before = len(up.served)
            up._rng = random.Random(11)  # the same upstream draws for both requests
            r = post(px)
            answers[share] = _answer_without_ids(r)
            assert len(up.served) - before == 1 or share == 1.0
            if share == 1.0:
                wait_for(lambda: metric(px, "optscale_traffic_records_total") == 1, 30, "the shadow episode")
                assert len(up.served) - before == 4  # the client's sample is reused, 3 more drawn
                assert metric(px, "optscale_shadow_episodes_total", policy="firstpass") == 1
                shadow_tokens = metric(px, "optscale_upstream_tokens_total", kind="shadow")
                assert shadow_tokens == sum(r.sent for r in up.served[before + 1:])
                assert metric(px, "optscale_upstream_tokens_total", kind="completion") == r.json()["usage"][
                    "completion_tokens"]  # the shadow's tokens are not the client's
    assert answers[1.0] == answers[0.0]  # the client's answer and usage do not change
    [record] = read_traffic(tmp_path / "1.0")
    client = answers[1.0]["optscale"]["samples"][0]
    assert record["samples"][0] == {"answer": client["answer"], "score": client["score"], "tokens": client["tokens"]}
    assert len(record["samples"]) == 4 and record["optscale"]["stopped_at"] == 1
    assert record["optscale"]["early_answer"] == client["answer"]


def test_a_streamed_answer_is_sampled_on_once_its_stream_has_ended(tmp_path):
    with fakes.FakeServer(fakes.FakeConfig(seed=9)) as up, Proxy(up.base_url, shadow_share=1.0,
                                                                  traffic_dir=str(tmp_path)) as px:
        before = len(up.served)
        body = {**EARLY, "stream": True, "stream_options": {"include_usage": True}}
        with httpx.stream("POST", px.url("/v1/chat/completions"), json=body, timeout=60) as r:
            events = [line for line in r.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]"
        usage = json.loads(events[-2][len("data: "):])["usage"]
        wait_for(lambda: metric(px, "optscale_traffic_records_total") == 1, 30, "the shadow episode")
        assert len(up.served) - before == 4
    [record] = read_traffic(tmp_path)
    assert usage["completion_tokens"] == record["samples"][0]["tokens"]  # the client paid for its one sample only


def test_a_traffic_record_is_a_pool_line_without_gold_or_prompts(tmp_path):
    with fakes.FakeServer(fakes.FakeConfig(seed=2)) as up, Proxy(up.base_url, shadow_share=1.0,
                                                                  traffic_dir=str(tmp_path)) as px:
        r = post(px, headers={"X-Request-Id": "req-1"})
        wait_for(lambda: metric(px, "optscale_traffic_records_total") == 1, 30, "the shadow episode")
    [record] = read_traffic(tmp_path)
    assert [p.name for p in tmp_path.iterdir()][0].endswith(".jsonl.gz")  # closed and gzipped at shutdown
    assert record["id"] == "req-1" and record["answer"] is None and "question" not in record
    canonical = json.dumps(MESSAGES, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert record["messages_sha256"] == hashlib.sha256(canonical.encode()).hexdigest()
    assert all(set(s) == {"answer", "score", "tokens"} for s in record["samples"])
    schema = json_schema()  # the pool schema, but for the gold answer that traffic does not have
    schema["properties"]["answer"] = {"type": "null"}
    jsonschema.validate(record, schema)
    meta = record["optscale"]
    assert set(meta) == {"policy", "settings", "table", "table_sha256", "n_max", "stopped_at", "early_answer",
                         "full_answer", "select", "model", "created"}
    assert meta["policy"] == "firstpass" and meta["settings"]["t"] == 0.0 and meta["n_max"] == 4
    assert meta["table"] is None and meta["select"] == "best" and meta["model"] == "fake-model"
    best = max(range(4), key=lambda i: record["samples"][i]["score"])
    assert meta["full_answer"] == record["samples"][best]["answer"]
    assert meta["early_answer"] == r.json()["optscale"]["samples"][0]["answer"]
    # the pool reader takes the line once it has a gold answer (reading gold-free pools is --labels consensus's)
    pool = tmp_path / "with-gold.jsonl"
    pool.write_text(json.dumps({**record, "answer": "0"}) + "\n")
    [problem] = read_pool(pool, grade_missing=False)
    assert [(s.answer, s.score, s.tokens) for s in problem.samples] == [
        (s["answer"], s["score"], s["tokens"]) for s in record["samples"]]


def test_prompts_are_stored_only_when_asked(tmp_path):
    with fakes.FakeServer(fakes.FakeConfig(seed=2)) as up, Proxy(
            up.base_url, shadow_share=1.0, traffic_dir=str(tmp_path), traffic_store_prompts=True) as px:
        r = post(px)
        wait_for(lambda: metric(px, "optscale_traffic_records_total") == 1, 30, "the shadow episode")
    [record] = read_traffic(tmp_path)
    assert record["question"] == MESSAGES[0]["content"]
    assert record["samples"][0]["text"] == r.json()["optscale"]["samples"][0]["text"]
    assert all(s["text"] for s in record["samples"])


def test_metrics_and_savings_equal_the_counts_in_the_traffic_files(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("sk-test\n")
    auth = {"Authorization": "Bearer sk-test"}
    with fakes.FakeServer(fakes.FakeConfig(seed=4)) as up, Proxy(
            up.base_url, shadow_share=1.0, traffic_dir=str(tmp_path / "t"), api_keys_file=str(keys),
            n_max=4) as px:
        for i in range(6):
            body = {**EARLY, "optscale": {"policy": "firstpass", "t": 0.5, "n_max": 4}}
            post(px, body, headers={**auth, "X-Request-Id": f"r{i}"})
        wait_for(lambda: metric(px, "optscale_traffic_records_total") == 6, 60, "six shadow episodes")
        assert httpx.get(px.url("/v1/optscale/savings")).status_code == 401
        savings = httpx.get(px.url("/v1/optscale/savings"), headers=auth).json()
        episodes = metric(px, "optscale_shadow_episodes_total", policy="firstpass", table="")
        agreed = metric(px, "optscale_shadow_agreement_total", policy="firstpass")
        early = metric(px, "optscale_shadow_tokens_total", kind="early")
        full = metric(px, "optscale_shadow_tokens_total", kind="full")
    records = read_traffic(tmp_path / "t")
    assert sorted(r["id"] for r in records) == [f"r{i}" for i in range(6)]
    want_agreed = sum(normalize_answer(r["optscale"]["early_answer"]) == normalize_answer(r["optscale"]["full_answer"])
                      for r in records)
    want_early = sum(sum(s["tokens"] for s in r["samples"][:r["optscale"]["stopped_at"]]) for r in records)
    want_full = sum(sum(s["tokens"] for s in r["samples"]) for r in records)
    assert (episodes, agreed, early, full) == (6, want_agreed, want_early, want_full)
    [row] = savings["data"]
    assert row["policy"] == "firstpass" and row["table"] is None and row["episodes"] == 6
    assert row["agreed"] == want_agreed and row["agreement_rate"] == pytest.approx(want_agreed / 6)
    assert row["agreement_ci95"] == pytest.approx(list(wilson_interval(want_agreed, 6)))
    assert row["token_share"] == pytest.approx(want_early / want_full) and want_early < want_full


def test_shadow_work_never_delays_a_client(tmp_path):
    """Two upstream slots; a shadow episode takes both with requests that never end; a client then gets
    them at once (the shadow is dropped, reason load) rather than waiting behind it."""
    with fakes.FakeServer(fakes.FakeConfig(seed=6)) as up, Proxy(
            up.base_url, shadow_share=1.0, max_in_flight=2, shadow_in_flight=2, in_flight=2,
            client={"timeout": 600, "idle_timeout": 600, "retries": 0}) as px:
        up.config.faults[:] = [None, "hang_start", "hang_start"]
        before = len(up.served)
        post(px)
        wait_for(lambda: len(up.served) - before == 3, 30, "the shadow's two requests under way")
        assert px.service.limiter.in_use == 2
        r = post(px, timeout=30)  # without the shadow yielding, this waits for requests that never end
        assert r.json()["optscale"]["n_used"] == 1
        wait_for(lambda: metric(px, "optscale_shadow_dropped_total", reason="load") >= 1, 10, "the shadow dropped")


def test_queued_shadows_are_bounded_and_a_shutdown_drops_them_at_once(tmp_path):
    with fakes.FakeServer(fakes.FakeConfig(seed=6)) as up:
        px = Proxy(up.base_url, shadow_share=1.0, shadow_in_flight=1, shadow_queue=1, in_flight=1,
                   client={"timeout": 600, "idle_timeout": 600, "retries": 0})
        with px:
            up.config.faults[:] = [None, "hang_start"] + [None] * 10
            post(px)
            wait_for(lambda: px.service.limiter.in_use == 1, 30, "the shadow under way")
            post(px)
            post(px)  # two shadows queued behind it with room for one: the older is dropped
            wait_for(lambda: metric(px, "optscale_shadow_dropped_total", reason="queue_full") == 1, 10, "a drop")
            assert len(px.app.state.optscale.shadow.queue) == 1
        assert not px._thread.is_alive()  # the shutdown did not wait for the hung shadow request
        assert metric(px, "optscale_shadow_dropped_total", reason="shutdown") == 2


# -- the traffic files ------------------------------------------------------------------------------------
def _write(writer: TrafficWriter, records: list[dict]) -> None:
    async def go():
        for r in records:
            await writer.append(r)
        await writer.aclose()

    asyncio.run(go())


def test_traffic_files_rotate_by_size_and_are_gzipped_whole(tmp_path):
    records = [{"id": f"p{i}", "answer": None, "samples": [{"answer": "1", "score": 0.5, "tokens": i}]}
               for i in range(7)]
    size = len(json.dumps(records[0], separators=(",", ":"))) + 1
    _write(TrafficWriter(str(tmp_path), rotate_bytes=3 * size, rotate_s=3600, replica="r"), records)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len(names) == 3 and all(n.startswith("traffic-") and n.endswith("-r-00000%d.jsonl.gz" % (i + 1))
                                   for i, n in enumerate(names))
    assert read_traffic(tmp_path) == records  # 3 + 3 + 1, in order, nothing lost or doubled


def test_traffic_files_rotate_by_age(tmp_path):
    records = [{"id": f"p{i}", "answer": None, "samples": []} for i in range(3)]
    _write(TrafficWriter(str(tmp_path), rotate_bytes=1 << 30, rotate_s=1e-9, replica="r"), records)
    assert len(list(tmp_path.glob("traffic-*.jsonl.gz"))) == 3 and read_traffic(tmp_path) == records


def test_a_full_disk_drops_records_without_harming_what_was_written(tmp_path, monkeypatch, caplog):
    real_write = os.write
    full = threading.Event()

    def write(fd, data):
        if full.is_set():  # half a line reaches the disk, then it is full
            real_write(fd, bytes(data[:len(data) // 2]))
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(traffic_module.os, "write", write)
    dropped = []
    writer = TrafficWriter(str(tmp_path), rotate_bytes=1 << 30, rotate_s=3600, replica="r", on_drop=dropped.append)
    records = [{"id": f"p{i}", "answer": None, "samples": []} for i in range(6)]

    async def go():
        await writer.append(records[0])
        full.set()
        for r in records[1:4]:
            await writer.append(r)
        [path] = tmp_path.glob("*.jsonl")
        assert path.read_bytes().decode().splitlines() == [json.dumps(records[0], separators=(",", ":"))]
        full.clear()
        for r in records[4:]:
            await writer.append(r)
        await writer.aclose()

    with caplog.at_level(logging.ERROR, logger="optscale.serve"):
        asyncio.run(go())
    assert dropped == ["disk_full"] * 3
    assert sum("cannot write shadow traffic" in m for m in caplog.messages) == 1  # logged once, not per record
    assert read_traffic(tmp_path) == [records[0], records[4], records[5]]


def test_a_killed_server_leaves_every_complete_line_readable(tmp_path):
    slow = fakes.FakeConfig(seed=8)
    with fakes.FakeServer(slow) as up:
        proc, base = start_serve(["--upstream", up.base_url, "--model", "fake-model", "--scorer", "confidence",
                                  "--shadow-share", "1", "--traffic-dir", str(tmp_path / "t")], tmp_path / "log")
        try:
            def ask(i):
                try:
                    httpx.post(base + "/v1/chat/completions", json=EARLY, timeout=60,
                               headers={"X-Request-Id": f"k{i}"})
                except httpx.TransportError:
                    pass  # a request still open when the server is killed (on purpose) loses its connection

            threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
            for t in threads:
                t.start()

            def lines() -> int:
                return sum(p.read_bytes().count(b"\n") for p in (tmp_path / "t").glob("traffic-*.jsonl"))

            wait_for(lambda: lines() >= 2, 60, "records written")
            proc.send_signal(signal.SIGKILL)  # mid-writing: the other shadow episodes are under way
            proc.wait(timeout=30)
            for t in threads:
                t.join(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    [path] = (tmp_path / "t").glob("traffic-*.jsonl")
    raw = path.read_bytes().decode()
    complete = raw.split("\n")[:-1]  # a partial last line (none here: one write per line) is what readers skip
    assert len(complete) >= 2 and all(json.loads(line)["answer"] is None for line in complete)


# -- the savings' numbers ----------------------------------------------------------------------------------
def _wilson_by_inversion(k: int, n: int) -> tuple[float, float]:
    """The proportions the score test does not reject, found by bisection (no closed form)."""
    from scipy.stats import norm

    z, p_hat = norm.ppf(0.975), k / n

    def accepted(p: float) -> bool:
        return abs(p_hat - p) <= z * math.sqrt(p * (1 - p) / n)

    def edge(lo: float, hi: float) -> float:  # accepted(lo) != accepted(hi)
        inside_lo = accepted(lo)
        for _ in range(200):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if accepted(mid) == inside_lo else (lo, mid)
        return (lo + hi) / 2

    low = 0.0 if k == 0 else edge(1e-15, p_hat)
    high = 1.0 if k == n else edge(p_hat, 1 - 1e-15)
    return low, high


@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (10, 10), (81, 263), (1, 1), (499, 1000)])
def test_the_wilson_interval_is_the_score_tests_acceptance_region(k, n):
    assert wilson_interval(k, n) == pytest.approx(_wilson_by_inversion(k, n), abs=1e-9)


def test_the_wilson_interval_matches_a_published_value():
    # Newcombe (1998), Statistics in Medicine 17, table I: 81/263 -> 0.2553 to 0.3662
    low, high = wilson_interval(81, 263)
    assert (round(low, 4), round(high, 4)) == (0.2553, 0.3662)
    assert wilson_interval(0, 0) is None


def test_savings_counts_report_per_policy_and_table():
    counts = SavingsCounts()

    async def go():
        await counts.record("learned", "t8.json", True, 10, 40)
        await counts.record("learned", "t8.json", False, 20, 40)
        await counts.record("optscale", None, True, 30, 30)
        return await counts.snapshot()

    snap = asyncio.run(go())
    assert snap == {"learned/t8.json": {"episodes": 2, "agreed": 1, "early_tokens": 30, "full_tokens": 80},
                    "optscale": {"episodes": 1, "agreed": 1, "early_tokens": 30, "full_tokens": 30}}
    rows = savings_report(snap)
    assert [(r["policy"], r["table"], r["agreement_rate"], r["token_share"]) for r in rows] == [
        ("learned", "t8.json", 0.5, 30 / 80), ("optscale", None, 1.0, 1.0)]


def test_a_shutdown_closes_shadow_sampling_before_the_drain_begins():
    from optscale.serve import create_app

    app = create_app(build_serve_config({**BASE, "shadow_share": 1.0}, env={}), env={})
    state = app.state.optscale

    async def go():
        assert not state.shadow.closed
        state.drain.begin(60)  # what SIGTERM does first
        assert state.shadow.closed and state.drain.draining

    asyncio.run(go())
