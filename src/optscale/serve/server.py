"""The HTTP server around the app: uvicorn, with a deadline for request heads and a shutdown that answers.

* **Request heads** (the request line and headers) must arrive within ``header_timeout_s`` of
  the connection or of their first byte (uvicorn has no such deadline: a client sending a
  byte a second held its connection forever); after it the client gets 408 and the connection
  is closed. An idle keep-alive connection is closed after ``keep_alive_s`` as before.
* **Shutdown** (SIGTERM, SIGINT): ``/ready`` and new generation requests get 503 at once (with
  ``Retry-After``; the server keeps accepting connections meanwhile, so a load balancer sees the
  503s, which it may retry on another replica, rather than refused connections), and the requests
  under way get ``drain_s`` to finish; then each is answered: 503 (OpenAI-shaped, with
  ``Connection: close``), or an error event for a stream that has begun, and only then does the
  server stop accepting connections and exit. A second SIGINT quits at once. Shadow sampling is
  dropped as the shutdown begins.
* **SIGHUP** reads ``--tables-dir`` again (as ``POST /v1/optscale/tables/reload`` does; with ``--state`` on
  every replica).
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import uvicorn
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from .errors import ApiError, error_body

__all__ = ["Drain", "Server", "http_protocol", "reload_on_signal", "reload_summary", "run", "shutting_down"]

log = logging.getLogger("optscale.serve")


def http_protocol(header_timeout_s: float) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol (h11, or httptools where installed) with a deadline for request heads."""

    class HeaderDeadline(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._head_timer: asyncio.TimerHandle | None = None
            self._arm()  # a fresh connection that sends nothing is closed too

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._update()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._update()  # a pipelined request may have begun

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _waiting_for_head(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _update(self) -> None:
            if not self._waiting_for_head():
                self._disarm()
            elif self._head_timer is None and not self.transport.is_closing():
                self._arm()

        def _arm(self) -> None:
            self._head_timer = self.loop.call_later(header_timeout_s, self._expired)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _expired(self) -> None:
            self._head_timer = None
            if self.transport.is_closing() or not self._waiting_for_head():
                return
            body = json.dumps(error_body(408, f"the request line and headers did not arrive within "
                                         f"{header_timeout_s:g} s (header_timeout_s)", None,
                                         "header_timeout")).encode()
            self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                                 b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
            self.transport.close()

    return HeaderDeadline


def shutting_down(retry_after_s: int) -> ApiError:
    return ApiError(503, "the server is shutting down; retry on another replica or later", None, "shutting_down",
                    {"Retry-After": str(retry_after_s), "Connection": "close"})


class Drain:
    """The server's shutdown as requests see it.

    ``draining``: a shutdown began (new generation requests are refused). ``cut`` (an event):
    the grace is over; streams that have begun end with an error event, and every tracked
    request whose answer has not begun is cancelled, to be answered 503 by the app's middleware.
    """

    def __init__(self) -> None:
        self.draining = False
        self.cut = asyncio.Event()
        self._requests: dict[asyncio.Task, dict[str, Any]] = {}
        self._on_begin: list[Callable[[], None]] = []

    def on_begin(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when a shutdown begins, before the requests under way are given their grace."""
        self._on_begin.append(callback)

    def track(self, task: asyncio.Task, state: dict[str, Any]) -> None:
        self._requests[task] = state

    def untrack(self, task: asyncio.Task) -> None:
        self._requests.pop(task, None)

    @property
    def busy(self) -> bool:
        """Whether a tracked request is still under way."""
        return any(not task.done() for task in self._requests)

    def begin(self, grace_s: float) -> None:
        if not self.draining:
            self.draining = True
            for callback in self._on_begin:
                callback()
            asyncio.get_running_loop().call_later(grace_s, self.cut_now)

    def cut_now(self) -> None:
        self.cut.set()
        for task, state in list(self._requests.items()):
            if not state.get("response_started") and not task.done():
                state["cut"] = True
                task.cancel()


class Server(uvicorn.Server):
    """uvicorn's server whose shutdown first tells the app (:class:`Drain`), so that every client is answered,
    and whose SIGHUP calls ``on_hangup`` (the app's table reload)."""

    def __init__(self, config: uvicorn.Config, drain: Drain, grace_s: float,
                 on_hangup: Callable[[], None] | None = None):
        super().__init__(config)
        self.drain, self.grace_s, self.on_hangup = drain, grace_s, on_hangup

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        if self.on_hangup is not None and hasattr(signal, "SIGHUP"):
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.on_hangup)

    async def shutdown(self, sockets: Any = None) -> None:
        self.drain.begin(self.grace_s)
        # Keep listening (new requests get 503) until the requests under way are done or cut, or a
        # second signal forces the exit; uvicorn's own shutdown then closes the listeners and waits.
        while self.drain.busy and not self.drain.cut.is_set() and not self.force_exit:
            await asyncio.sleep(0.05)
        await super().shutdown(sockets)


def reload_summary(statuses: list[Any]) -> str:
    """What a reload did, for the log: ``2 loaded, 1 refused``."""
    counts: dict[str, int] = {}
    for status in statuses:
        counts[status.status] = counts.get(status.status, 0) + 1
    return ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "no tables"


def reload_on_signal(reload: Callable[[], Awaitable[list[Any]]]) -> Callable[[], None]:
    """A SIGHUP handler that runs ``reload`` (the app's reload: file reads in a worker thread, and with
    ``--state`` a broadcast to every replica) and logs what it did."""
    pending: set[asyncio.Task] = set()

    async def run_reload() -> None:
        try:
            statuses = await reload()
        except Exception:
            log.exception("reloading the stopping tables (SIGHUP) failed")
            return
        log.warning("stopping tables reloaded (SIGHUP): %s", reload_summary(statuses))

    def handler() -> None:
        task = asyncio.get_running_loop().create_task(run_reload())
        pending.add(task)
        task.add_done_callback(pending.discard)

    return handler


def run(app: Any, config: Any) -> None:
    """Serve ``app`` (from :func:`~optscale.serve.create_app`) as ``config`` (its
    :class:`~optscale.serve.ServeConfig`) says, until SIGTERM/SIGINT; SIGHUP reloads the stopping tables."""
    uv = uvicorn.Config(app, host=config.host, port=config.port, log_level="warning", access_log=False,
                        timeout_graceful_shutdown=config.drain_s + 2, **config.uvicorn_options())
    server = Server(uv, app.state.drain, config.drain_s, reload_on_signal(app.state.optscale.reload_all_tables))
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn raises the SIGINT it held back once it has shut down: a clean stop
        pass
    if not server.started:
        sys.exit(3)  # uvicorn's exit status when the server could not start
