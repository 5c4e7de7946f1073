"""Redis's clock as seen from this process: how long until a lease expires, by the clock that expires it.

A lease lives `ttl` by Redis's clock, which may differ from this machine's by any amount. One TIME round trip
gives Redis's time now and, with the local monotonic clock, an upper bound of Redis's time later: the reading
plus the local time elapsed since, plus the round trip's uncertainty. Readings are retaken every few seconds
(the dispatch consumer's sweep) and not trusted after MAX_READING_AGE_SECONDS, so clock drift between readings
is a matter of microseconds.
"""

from __future__ import annotations

import time

from redis.asyncio import Redis

MAX_READING_AGE_SECONDS = 60.0


class RedisClock:
    def __init__(self) -> None:
        # (Redis's time in ms, local monotonic seconds at the middle of the round trip, half the round trip in ms)
        self._reading: tuple[float, float, float] | None = None

    async def read(self, redis: Redis) -> None:
        before = time.monotonic()
        seconds, micros = await redis.time()
        after = time.monotonic()
        self._reading = (seconds * 1000 + micros / 1000, (before + after) / 2, (after - before) * 500)

    def ms_until(self, redis_ms: int) -> float | None:
        """At least how many ms remain until `redis_ms` (a time by Redis's clock; negative once it has passed);
        None without a recent reading."""
        if self._reading is None:
            return None
        at_ms, local, error_ms = self._reading
        elapsed = time.monotonic() - local
        if elapsed > MAX_READING_AGE_SECONDS:
            return None
        return redis_ms - (at_ms + elapsed * 1000 + error_ms)
