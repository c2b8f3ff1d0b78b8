"""``optscale serve`` at the HTTP level: connections that stay usable, request heads and bodies bounded in
time, text that is valid Unicode, numbers that are numbers, and an idempotency store whose work per
request does not grow with what it holds."""

from __future__ import annotations

import asyncio
import http.client
import json
import select
import socket
import sys
import time

import httpx
import pytest
from serve_fakes import Q, Proxy, wait_for

from optscale.serve.idempotency import IdempotencyStore

OK = {"model": "fake-model", "messages": [{"role": "user", "content": Q}]}


@pytest.fixture(scope="module")
def proxy(upstream):
    with Proxy(upstream.base_url, n_max=2, header_timeout_s=1.0, body_timeout_s=1.0) as p:
        yield p


def read_until_closed(sock: socket.socket, timeout: float = 20.0, trickle: bytes = b"") -> bytes:
    """Everything the server sends until it closes the connection (sending ``trickle`` a byte at a time,
    one every 0.2 s, meanwhile); fails if it is still open after ``timeout``."""
    deadline = time.monotonic() + timeout
    got, left = b"", list(trickle)
    while time.monotonic() < deadline:
        readable, _, _ = select.select([sock], [], [], 0.2)
        if readable:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                return got
            if not chunk:
                return got
            got += chunk
        elif left:
            sock.sendall(bytes([left.pop(0)]))
    raise AssertionError(f"the connection was still open after {timeout:g} s (received {got[:200]!r})")


# -- every exception answered, and the connection still usable --------------------------------------
def test_an_unhandled_error_is_an_openai_shaped_500_on_a_connection_that_stays_usable(proxy, monkeypatch):
    async def broken():
        raise RuntimeError("a bug")

    monkeypatch.setattr(proxy.service, "upstream_models", broken)
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=20)
    try:
        conn.request("GET", "/v1/models")
        r = conn.getresponse()
        err = json.loads(r.read())["error"]
        assert r.status == 500 and err["code"] == "internal_error" and err["type"] == "server_error", err
        assert "a bug" not in err["message"]  # the traceback is in the log, not the answer
        # the server either said it closes (then the client opens a new connection) or keeps the connection:
        # the next request on it is answered (it once failed with ECONNRESET on a silently closed connection)
        conn.request("GET", "/health")
        again = conn.getresponse()
        assert again.status == 200 and json.loads(again.read()) == {"status": "ok"}
    finally:
        conn.close()


# -- bad text and bad numbers are 400s naming the field ---------------------------------------------
@pytest.mark.parametrize("path,raw,param", [
    ("/v1/chat/completions", '{"model": "fake-model", "messages": [{"role": "user", "content": "x\\ud800"}]}',
     "messages[0].content"),
    ("/v1/completions", '{"model": "fake-model", "prompt": "\\ud800 how many?"}', "prompt"),
    ("/v1/completions", '{"model": "fake-model", "prompt": ["\\udfff"]}', "prompt[0]"),
    ("/v1/chat/completions", '{"model": "fake-model", "messages": [{"role": "user", "content": "x"}], '
     '"stop": "\\ud800"}', "stop"),
    ("/v1/chat/completions", '{"model": "fake-model", "messages": [{"role": "user", "content": "x"}], '
     '"stop": ["a", "b\\ud83d"]}', "stop[1]"),
])
def test_a_lone_surrogate_is_a_400_naming_the_field(proxy, path, raw, param):
    r = httpx.post(proxy.url(path), content=raw.encode(), headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["code"] == "invalid_unicode" and "surrogate" in err["message"], err


@pytest.mark.parametrize("field,value", [("n", True), ("n", False), ("max_tokens", True), ("seed", True),
                                         ("temperature", True), ("top_p", True), ("max_completion_tokens", True),
                                         ("n", "1"), ("temperature", "0.5")])
def test_a_boolean_or_a_string_is_not_a_number(proxy, field, value):
    r = httpx.post(proxy.url("/v1/chat/completions"), json={**OK, field: value}, timeout=30)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == field


def test_numbers_still_take_integers_for_floats(proxy):
    r = httpx.post(proxy.url("/v1/chat/completions"), json={**OK, "n": 1, "temperature": 1, "top_p": 1,
                                                             "optscale": {"policy": "bon", "n_max": 1}}, timeout=30)
    assert r.status_code == 200, r.text


# -- request heads and bodies bounded in time ------------------------------------------------------
def test_a_request_head_sent_a_byte_at_a_time_gets_408_and_the_connection_closed(proxy):
    sock = socket.create_connection(("127.0.0.1", proxy.port))
    try:
        head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" * 20
        start = time.monotonic()
        got = read_until_closed(sock, trickle=head)  # 0.2 s a byte: it would take minutes to finish
        assert got.startswith(b"HTTP/1.1 408") and b"header_timeout_s" in got, got
        assert time.monotonic() - start < 10
    finally:
        sock.close()


def test_a_connection_that_sends_nothing_is_closed_after_the_head_deadline(proxy):
    sock = socket.create_connection(("127.0.0.1", proxy.port))
    try:
        assert read_until_closed(sock).startswith(b"HTTP/1.1 408")
    finally:
        sock.close()


def test_slow_uploads_time_out_and_give_their_slots_and_bytes_back(proxy):
    """Slow-loris uploads hold neither a connection nor body bytes past body_timeout_s, and fast clients are
    served meanwhile."""
    reader = proxy.app.state.optscale.bodies
    slow = []
    for _ in range(8):
        sock = socket.create_connection(("127.0.0.1", proxy.port))
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100000\r\n\r\n" + b'{"model": "fake-model", "messages": [' + b" " * 1000)
        slow.append(sock)
    try:
        wait_for(lambda: reader.active == 8 and reader.held >= 8 * 1000, what="the slow bodies being read")
        with httpx.Client(timeout=30) as c:  # served while the slow ones stall
            for _ in range(3):
                assert c.post(proxy.url("/v1/chat/completions"), json={
                    **OK, "optscale": {"policy": "bon", "n_max": 1}}).status_code == 200
        for sock in slow:  # each keeps trickling, and is answered 408 and cut off all the same
            got = read_until_closed(sock, trickle=b" " * 200)
            assert got.startswith(b"HTTP/1.1 408") and b"connection: close" in got.lower(), got[:300]
        wait_for(lambda: reader.active == 0 and reader.held == 0, what="the body slots and bytes given back")
    finally:
        for sock in slow:
            sock.close()


# -- the idempotency store ------------------------------------------------------------------------------
def _lines_run(store: IdempotencyStore, call) -> int:
    """Lines of the store's module executed by ``call()`` (the work it does, counted, not timed)."""
    count = 0
    target = sys.modules[IdempotencyStore.__module__].__file__

    def tracer(frame, event, arg):
        nonlocal count
        if frame.f_code.co_filename != target:
            return None
        if event == "line":
            count += 1
        return tracer

    sys.settrace(tracer)
    try:
        call()
    finally:
        sys.settrace(None)
    return count


def test_the_idempotency_store_work_per_request_does_not_grow_with_its_entries():
    now = [0.0]

    def filled(entries: int) -> IdempotencyStore:
        async def go():
            store = IdempotencyStore(60, 100_000, 10**9, size=len, clock=lambda: now[0])
            for i in range(entries):
                now[0] = i * 1e-3  # each finished a little later: the oldest expire first

                async def work():
                    return "x"
                await store.run("c", f"k{i}", "f", work)
            return store

        return asyncio.run(go())

    small, large = filled(10), filled(5000)
    work = [_lines_run(store, lambda s=store: s.check("c", "new-key", "f")) for store in (small, large)]
    assert work[0] == work[1], work  # it used to look at every entry: 5000 entries, 500 times the work
    # expiry still happens in time order and keeps the bounds
    now[0] = 60 + 2.4995  # the entries of the first 2.4995 s (2,500 of them) are past their ttl
    large.check("c", "new-key", "f")
    assert len(large) == 2500 and large.bytes == 2500


def test_bodies_held_at_once_are_bounded_in_bytes(upstream):
    """A slow upload holds the bytes it sent until it times out; a body that would pass
    max_body_buffer_bytes meanwhile gets 429, and is served once the bytes are free."""
    with Proxy(upstream.base_url, n_max=1, body_timeout_s=1.0, max_body_bytes=1024,
               max_body_buffer_bytes=1024) as px:
        reader = px.app.state.optscale.bodies
        slow = socket.create_connection(("127.0.0.1", px.port))
        try:
            slow.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 1024\r\n\r\n" + b" " * 1000)
            wait_for(lambda: reader.held == 1000, what="the slow body's bytes held")
            r = httpx.post(px.url("/v1/chat/completions"), json=OK, timeout=30)
            assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_uploads", r.text
            assert "max_body_buffer_bytes" in r.json()["error"]["message"] and r.headers["retry-after"]
            assert read_until_closed(slow).startswith(b"HTTP/1.1 408")
        finally:
            slow.close()
        wait_for(lambda: reader.held == 0, what="the bytes given back")
        assert httpx.post(px.url("/v1/chat/completions"), json=OK, timeout=30).status_code == 200
