"""Redis's clock as seen from a process (workers.redis_clock), against a real redis-server."""

from __future__ import annotations

import asyncio

import pytest

from app.runtime import Runtime
from workers import redis_clock
from workers.redis_clock import RedisClock


async def redis_ms(rt: Runtime) -> int:
    seconds, micros = await rt.redis.time()
    return seconds * 1000 + micros // 1000


async def test_an_age_is_never_under_the_true_one_and_close_to_it(orm: Runtime) -> None:
    clock = RedisClock()
    assert clock.age_ms(0) is None  # nothing read yet: nothing known
    await clock.read(orm.redis)
    for _ in range(5):
        now = await redis_ms(orm)
        await asyncio.sleep(0.02)
        age = clock.age_ms(now)
        assert age is not None and 20 <= age < 20 + 50, age  # it happened at least 20 ms ago
    ten_seconds_ago = await redis_ms(orm) - 10_000
    age = clock.age_ms(ten_seconds_ago)
    assert age is not None and 10_000 <= age < 10_050


async def test_an_old_reading_is_not_trusted(orm: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redis_clock, "MAX_READING_AGE_SECONDS", 0.05)
    clock = RedisClock()
    await clock.read(orm.redis)
    assert clock.age_ms(await redis_ms(orm)) is not None
    await asyncio.sleep(0.1)
    assert clock.age_ms(await redis_ms(orm)) is None
