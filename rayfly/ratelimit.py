"""Byte-rate limits as token buckets shared by every task on a node.

A bucket starts empty and fills at ``rate`` bytes/s up to one second's worth; :meth:`take`
subtracts first and then waits out any deficit, so concurrent takers queue behind each other and
the long-run rate is ``rate`` (a piece larger than a second's worth is simply waited for).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


class TokenBucket:
    """``rate`` bytes per second (None: unlimited)."""

    def __init__(
        self,
        rate: float | None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.rate = rate
        self._clock, self._sleep = clock, sleep
        self._tokens = 0.0
        self._at = clock()

    async def take(self, nbytes: int) -> float:
        """Wait until ``nbytes`` may pass; returns the seconds waited."""
        if not self.rate or nbytes <= 0:
            return 0.0
        now = self._clock()
        self._tokens = min(self.rate, self._tokens + (now - self._at) * self.rate)
        self._at = now
        self._tokens -= nbytes
        if self._tokens >= 0:
            return 0.0
        wait = -self._tokens / self.rate
        await self._sleep(wait)
        return wait


async def take_all(buckets: list[TokenBucket], nbytes: int) -> None:
    """Pass ``nbytes`` through every bucket (the slowest one sets the pace)."""
    for bucket in buckets:
        await bucket.take(nbytes)
