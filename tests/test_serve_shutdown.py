"""``optscale serve`` stopped (SIGTERM, SIGINT) with requests under way: every client is answered, a request
with an OpenAI-shaped 503 and a stream with an error event, and the process exits."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading

import httpx
import live_fakes as fakes
import pytest
from serve_fakes import wait_for

BODY = {"model": "fake-model", "messages": [{"role": "user", "content": "Problem p1: how many?"}],
        "optscale": {"policy": "bon", "n_max": 2}}


def start_serve(args: list[str], log_path) -> tuple[subprocess.Popen, str]:
    """``optscale serve ARGS`` on a free port, and its base URL once it is ready (a port taken between
    choosing it and binding it is chosen again)."""
    for _ in range(5):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        with open(log_path, "w") as log:
            proc = subprocess.Popen([sys.executable, "-m", "optscale", "serve", *args, "--port", str(port)],
                                    stdout=log, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            try:
                return httpx.get(base + "/ready").status_code == 200
            except httpx.TransportError:
                return proc.poll() is not None  # it exited: see below

        wait_for(ready, timeout=60, what="the server ready")
        if proc.poll() is None:
            return proc, base
        assert "address already in use" in open(log_path).read(), open(log_path).read()
    raise AssertionError("no free port")


def slow_upstream() -> fakes.FakeServer:
    """A fake upstream whose samples take 20 s each: episodes are still under way when the signal comes."""
    return fakes.FakeServer(fakes.FakeConfig(token_latency=0.05, min_tokens=400, max_tokens=400))


def serve_with_drain(up: fakes.FakeServer, drain_s: float, tmp_path) -> tuple[subprocess.Popen, str]:
    config = tmp_path / "serve.json"
    config.write_text(json.dumps({"drain_s": drain_s}))
    return start_serve(["--upstream", up.base_url, "--model", "fake-model", "--scorer", "confidence",
                        "--config", str(config)], tmp_path / "serve.log")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stopped_server_answers_every_request_under_way(sig, tmp_path):
    with slow_upstream() as up:
        proc, base = serve_with_drain(up, 0.5, tmp_path)
        try:
            before = len(up.served)
            answers: dict[str, object] = {}

            def plain():
                r = httpx.post(base + "/v1/chat/completions", json=BODY, timeout=60)
                answers["plain"] = r

            def streamed():
                with httpx.stream("POST", base + "/v1/chat/completions", json={**BODY, "stream": True},
                                  timeout=60) as r:
                    answers["stream_status"] = r.status_code
                    answers["stream"] = [line for line in r.iter_lines() if line]

            threads = [threading.Thread(target=plain), threading.Thread(target=streamed)]
            for t in threads:
                t.start()
            wait_for(lambda: len(up.served) - before >= 4, timeout=30, what="both episodes sampling")
            proc.send_signal(sig)
            for t in threads:
                t.join(60)
            proc.wait(timeout=30)  # and it exits
        finally:
            if proc.poll() is None:
                proc.kill()
    r = answers["plain"]
    assert r.status_code == 503 and r.headers["connection"] == "close" and r.headers["retry-after"], r.text
    assert r.json()["error"]["code"] == "shutting_down" and r.json()["error"]["type"] == "service_unavailable"
    assert answers["stream_status"] == 200
    events = [json.loads(line[6:]) for line in answers["stream"] if line.startswith("data: {")]
    assert events and events[-1]["error"]["code"] == "shutting_down", answers["stream"]


def test_during_the_drain_new_requests_and_ready_get_503_not_a_refused_connection(tmp_path):
    """Issue 17: on SIGTERM /ready turns 503 at once and new requests get 503 with Retry-After while the
    episodes under way drain (a load balancer sees 503s, not refused connections)."""
    with slow_upstream() as up:
        proc, base = serve_with_drain(up, 30, tmp_path)

        def under_way():
            try:
                httpx.post(base + "/v1/chat/completions", json=BODY, timeout=90)
            except httpx.TransportError:
                pass  # the test kills the server while this request still drains

        worker = threading.Thread(target=under_way)
        try:
            before = len(up.served)
            worker.start()
            wait_for(lambda: len(up.served) - before >= 2, timeout=30, what="the episode sampling")
            proc.send_signal(signal.SIGTERM)

            def ready_503():
                r = httpx.get(base + "/ready", timeout=10)
                return r if r.status_code == 503 else None

            r = wait_for(ready_503, timeout=20, what="/ready answering 503")
            assert r.json()["error"]["code"] == "shutting_down" and r.headers["retry-after"]
            r = httpx.post(base + "/v1/chat/completions", json=BODY, timeout=10)
            assert r.status_code == 503 and r.headers["retry-after"], r.text
            assert r.json()["error"]["code"] == "shutting_down"
            assert proc.poll() is None and worker.is_alive()  # still draining the episode under way
        finally:
            proc.kill()
            proc.wait(timeout=30)
            worker.join(60)
