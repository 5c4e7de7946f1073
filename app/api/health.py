"""Readiness: can this process serve? Each dependency is checked concurrently and bounded in time."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError
from tortoise.transactions import in_transaction

from app import engine

OK, FAILING, TIMEOUT = "ok", "failing", "timeout"

Check = Callable[[], Coroutine[Any, Any, bool]]


@dataclass(frozen=True)
class Readiness:
    checks: dict[str, str]

    @property
    def ready(self) -> bool:
        return all(v == OK for v in self.checks.values())

    @property
    def failing(self) -> list[str]:
        return [name for name, v in self.checks.items() if v != OK]


async def database_answers() -> bool:
    # Through a transaction: on SQLite a bare SELECT goes to the read-only connection, which would
    # answer even while the connection that writes is wedged.
    async with in_transaction("default") as conn:
        await conn.execute_query("SELECT 1")
    return True


def redis_answers(redis: Redis) -> Check:
    async def check() -> bool:
        return bool(await redis.ping())

    return check


# Checks that overran are cancelled but not awaited (a cancel inside redis-py retries can take a
# while to land); they are kept here until they end, so that none is garbage-collected mid-flight.
_abandoned: set[asyncio.Task[Any]] = set()


def abandon(task: asyncio.Task[Any]) -> None:
    """Cancel a task that overran without waiting for it."""
    task.cancel()
    _abandoned.add(task)
    task.add_done_callback(_forget)


def _forget(task: asyncio.Task[Any]) -> None:
    _abandoned.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved, so that asyncio does not log it as never retrieved


async def readiness(checks: dict[str, Check], timeout: float) -> Readiness:
    """Run every check at once; one that raises or returns False is failing, one that overruns is timeout.

    The answer never takes much longer than `timeout`, whatever a dependency does."""
    tasks = {name: asyncio.create_task(check(), name=f"readyz-{name}") for name, check in checks.items()}
    await asyncio.wait(tasks.values(), timeout=timeout)
    results: dict[str, str] = {}
    for name, task in tasks.items():
        if not task.done():
            abandon(task)
            results[name] = TIMEOUT
        elif task.cancelled() or task.exception() is not None or not task.result():
            results[name] = FAILING
        else:
            results[name] = OK
    return Readiness(results)


async def queue_depth(redis: Redis, timeout: float) -> float:
    """What waits for a worker (app.engine.queue_depth); NaN when Redis does not answer within `timeout`."""
    read: asyncio.Task[int] = asyncio.create_task(engine.queue_depth(redis))
    done, _ = await asyncio.wait({read}, timeout=timeout)
    if not done:
        abandon(read)
        return math.nan
    try:
        return float(read.result())
    except (RedisError, OSError):
        return math.nan
