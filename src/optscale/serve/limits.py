"""Global limits: episodes at once (refused beyond, never queued) and upstream requests, fair between episodes.

:class:`EpisodeGate` admits at most ``max_episodes`` requests that sample; one more gets a 429
at once. :class:`FairLimiter` caps upstream requests across all episodes; each episode takes
requests through its own :meth:`~FairLimiter.lane`, and a freed slot goes to the waiting
lanes in turn (round robin), so an episode that asks for many samples cannot starve one that
arrived later. Waiters are bounded by ``max_episodes x in_flight``: there is no unbounded queue.
"""

from __future__ import annotations

import asyncio
import collections

__all__ = ["EpisodeGate", "FairLimiter", "Lane"]


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

    def lane(self) -> Lane:
        """A new episode's way in: an async context manager, usable by several of its requests at once."""
        return Lane(self)

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
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():  # granted, then cancelled: give the slot back
                limiter._release()
            raise

    async def __aexit__(self, *exc: object) -> None:
        self.limiter._release()
