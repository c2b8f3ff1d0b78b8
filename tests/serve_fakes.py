"""The proxy of ``optscale serve`` on a real socket (uvicorn in a thread), in front of the fake upstream."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import httpx
from live_fakes import FakeConfig, FakeServer

from conftest import wait_for
from optscale.serve import build_serve_config, create_app

__all__ = ["FaultyUpstream", "Proxy", "wait_for"]


#: The question the fake upstream answers in the serve tests.
Q = "Problem p1: how many?"


class Proxy:
    """``with Proxy(upstream_url, scorer="confidence", n_max=4) as proxy``: ``proxy.base_url``, ``proxy.app``."""

    def __init__(self, upstream: str, env: dict[str, str] | None = None, wait_ready: bool = True,
                 ready_timeout: float = 20.0, tracer_provider: Any = None, **settings: Any):
        values = {"upstream": upstream, "model": "fake-model", "scorer": "confidence", "keepalive_s": 0.05,
                  "client": {"backoff": 0.01, "backoff_max": 0.05, "idle_timeout": 2, "timeout": 20, "retries": 2},
                  **settings}
        self.config = build_serve_config(values, env={})
        self.app = create_app(self.config, env=env or {}, tracer_provider=tracer_provider)
        self.wait_ready = wait_ready
        self.ready_timeout = ready_timeout

    @property
    def service(self):
        return self.app.state.service

    def __enter__(self) -> Proxy:
        import uvicorn

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self._server = uvicorn.Server(uvicorn.Config(self.app, log_level="critical", timeout_graceful_shutdown=1,
                                                     **self.config.uvicorn_options()))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        self._sock = sock
        deadline = time.monotonic() + self.ready_timeout
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the proxy did not start")
            time.sleep(0.01)
        try:
            # /ready checks the upstream, which a loaded machine (a real llama.cpp server) may answer slowly: each
            # poll may take what is left of ready_timeout, not httpx's default 5 s.
            while self.wait_ready and httpx.get(self.url("/ready"),
                                                timeout=max(1.0, deadline - time.monotonic())).status_code != 200:
                if time.monotonic() > deadline:
                    raise RuntimeError("the proxy did not get ready")
                time.sleep(0.02)
        except BaseException:
            self.__exit__()  # a proxy that never got ready is stopped, not left logging into later tests
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Until the proxy runs no request: whatever a request logs has been logged."""
        tasks = self._server.server_state.tasks
        wait_for(lambda: not tasks, timeout, "the proxy to finish its requests")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    @property
    def base_url(self) -> str:
        return self.url("/v1")


class FaultyUpstream(FakeServer):
    """The fake upstream with timed rate limits: fault ``"429:S"`` answers 429 with ``Retry-After: S``.

    ``arrivals`` holds the monotonic time of every generation request (faulty or not), so a
    test can see when the proxy came back after a ``Retry-After``.
    """

    def __init__(self, config: FakeConfig | None = None):
        self.arrivals: list[float] = []
        super().__init__(config)

    async def _generate(self, body: dict[str, Any], chat: bool):
        self.arrivals.append(time.monotonic())
        with self._lock:
            fault = self.config.faults[0] if self.config.faults else None
            timed = isinstance(fault, str) and fault.startswith("429:")
            if timed:
                self.config.faults.pop(0)
        if timed:
            return self._error(429, "rate limited", {"retry-after": fault.partition(":")[2]})
        return await super()._generate(body, chat)
