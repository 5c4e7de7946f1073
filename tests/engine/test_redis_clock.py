"""Redis's clock as seen from a process (app.engine.redis_clock), against a real redis-server."""

from __future__ import annotations

import asyncio
import time

import pytest

from app.engine import redis_clock
from app.engine.redis_clock import RedisClock
from app.platform.runtime import Runtime


async def redis_ms(rt: Runtime) -> int:
    seconds, micros = await rt.redis.time()
    return seconds * 1000 + micros // 1000


async def test_what_remains_until_a_moment_is_never_overstated_and_close_to_the_truth(orm: Runtime) -> None:
    clock = RedisClock()
    assert clock.ms_until(0) is None  # nothing read yet: nothing known
    before = time.monotonic()
    await clock.read(orm.redis)
    read_ms = (time.monotonic() - before) * 1000  # the reading's own uncertainty is within its round trip
    for back in (0, 10_000):  # a moment just past, and one ten seconds before it
        for _ in range(5):
            started = time.monotonic()
            moment = await redis_ms(orm) - back
            await asyncio.sleep(0.02)
            left = clock.ms_until(moment)
            passed_ms = (time.monotonic() - started) * 1000  # at most this long since `moment` (+ back)
            assert left is not None
            assert left <= -(back + 20), left  # at least 20 ms (+ back) have passed: never overstated
            # Understated by no more than the uncertainties: local timing, the reading's, Redis's ms truncation.
            assert left >= -(back + passed_ms + read_ms + 1), (left, passed_ms, read_ms)
    moment = await redis_ms(orm) + 30_000
    left = clock.ms_until(moment)
    assert left is not None and left <= 30_000  # a moment ahead: what remains, never more


async def test_an_old_reading_is_not_trusted(orm: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redis_clock, "MAX_READING_AGE_SECONDS", 0.05)
    clock = RedisClock()
    await clock.read(orm.redis)
    assert clock.ms_until(await redis_ms(orm)) is not None
    await asyncio.sleep(0.1)
    assert clock.ms_until(await redis_ms(orm)) is None
