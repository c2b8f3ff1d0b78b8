"""Global limits: episodes at once (refused beyond, never queued) and upstream requests, fair between episodes.

:class:`EpisodeGate` admits at most ``max_episodes`` requests that sample; one more gets a 429
at once. :class:`FairLimiter` caps upstream requests across all episodes; each episode takes
requests through its own :meth:`~FairLimiter.lane`, and a freed slot goes to the waiting
lanes in turn (round robin), so an episode that asks for many samples cannot starve one that
arrived later. Waiters are bounded by ``max_episodes x in_flight``: there is no unbounded queue.

Background work (shadow sampling) takes requests through :meth:`FairLimiter.background`, at the
lowest priority: a slot only when one is free and no episode's request waits. When an
episode's request has to wait, :attr:`FairLimiter.on_wait` is called, so background work
holding slots can be dropped to make room.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable

__all__ = ["EpisodeGate", "FairLimiter", "Lane", "BackgroundLane"]


class EpisodeGate:
    """Counts episodes under way; :meth:`try_enter` refuses (returns False) at the limit."""

    def __init__(self, limit: int):
        self.limit = limit
        self.active = 0

    def try_enter(self) -> bool:
        if self.active >= self.limit:
            return False
        self.active += 1
        return True

    def leave(self) -> None:
        self.active -= 1


class FairLimiter:
    """At most ``capacity`` holders at once; free slots are handed to waiting lanes round robin."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.in_use = 0
        self._ring: collections.deque[Lane] = collections.deque()
        self._background: collections.deque[asyncio.Future[None]] = collections.deque()
        #: Called when an episode's request has to wait for a slot (background work may make room).
        self.on_wait: Callable[[], None] | None = None

    def lane(self) -> Lane:
        """A new episode's way in: an async context manager, usable by several of its requests at once."""
        return Lane(self)

    def background(self) -> BackgroundLane:
        """The way in of work that must never delay an episode: served only from spare capacity."""
        return BackgroundLane(self)

    def _release(self) -> None:
        self.in_use -= 1
        self._dispatch()

    def _dispatch(self) -> None:
        while self.in_use < self.capacity and self._ring:
            lane = self._ring.popleft()
            while lane.waiters and lane.waiters[0].done():  # cancelled while waiting
                lane.waiters.popleft()
            if not lane.waiters:
                continue
            self.in_use += 1
            lane.waiters.popleft().set_result(None)
            if lane.waiters:
                self._ring.append(lane)
        while self.in_use < self.capacity and not self._ring and self._background:
            waiter = self._background.popleft()
            if not waiter.done():  # else cancelled while waiting
                self.in_use += 1
                waiter.set_result(None)


class Lane:
    """One episode's access to a :class:`FairLimiter`."""

    def __init__(self, limiter: FairLimiter):
        self.limiter = limiter
        self.waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def __aenter__(self) -> None:
        limiter = self.limiter
        future = asyncio.get_running_loop().create_future()
        self.waiters.append(future)
        if self not in limiter._ring:
            limiter._ring.append(self)
        limiter._dispatch()  # a free slot is taken at once (in turn with any lane waiting before)
        if not future.done() and limiter.on_wait is not None:
            limiter.on_wait()
        await _granted(limiter, future)

    async def __aexit__(self, *exc: object) -> None:
        self.limiter._release()


class BackgroundLane:
    """Lowest-priority access to a :class:`FairLimiter` (see :meth:`FairLimiter.background`)."""

    def __init__(self, limiter: FairLimiter):
        self.limiter = limiter

    async def __aenter__(self) -> None:
        future = asyncio.get_running_loop().create_future()
        self.limiter._background.append(future)
        self.limiter._dispatch()
        await _granted(self.limiter, future)

    async def __aexit__(self, *exc: object) -> None:
        self.limiter._release()


async def _granted(limiter: FairLimiter, future: asyncio.Future[None]) -> None:
    try:
        await future
    except asyncio.CancelledError:
        if future.done() and not future.cancelled():  # granted, then cancelled: give the slot back
            limiter._release()
        raise
