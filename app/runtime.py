"""What a service call needs besides its arguments: settings, the Redis pool and a clock."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TypeVar

from arq.connections import ArqRedis, RedisSettings, create_pool
from redis.asyncio.retry import Retry
from redis.backoff import AbstractBackoff, ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.config import Settings
from app.redis_pool import bounded_pool
from app.timefmt import utcnow

T = TypeVar("T")


class LocalRunner(Protocol):
    """A worker in this process that takes a trigger straight from the call that accepted it, without the
    dispatch list: the API's embedded worker (workers.dispatch.Consumer)."""

    async def reserve(self) -> bool:
        """Take a free slot for a run about to be accepted; False when there is none (the list it is)."""

    def release(self) -> None:
        """Give back a slot reserved for a run that was not accepted."""

    async def start(self, raw: bytes) -> None:
        """Run an accepted message in the reserved slot; returns once its handler has started (or the run
        ended before that). A worker stopping meanwhile frees the slot and queues the message for the others."""


@dataclass
class Runtime:
    settings: Settings
    redis: ArqRedis
    clock: Callable[[], datetime] = field(default=utcnow)
    # Set by the embedded worker while it takes runs (workers.dispatch); None in a process without one.
    local_runner: LocalRunner | None = None

    def now(self) -> datetime:
        return self.clock()


def redis_settings(settings: Settings) -> RedisSettings:
    # One quick attempt: a caller waiting on a dead Redis should get a 503, not a long retry loop.
    rs = RedisSettings.from_dsn(settings.redis_url)
    rs.conn_timeout = 2
    rs.conn_retries = 1
    rs.conn_retry_delay = 0
    return rs


def worker_redis_settings(settings: Settings) -> RedisSettings:
    """A worker waits out a Redis restart instead of dying: a command retries with backoff until
    WORKER_REDIS_RETRY_SECONDS have passed since it first failed, then gives up."""
    rs = RedisSettings.from_dsn(settings.redis_url)
    rs.conn_timeout = 2
    # OSError too: a stopped Redis refuses the connection with a plain ConnectionRefusedError, which
    # redis-py's default (its own ConnectionError and TimeoutError) would not retry at all.
    retried = (RedisConnectionError, RedisTimeoutError, OSError)
    rs.retry = DeadlineRetry(ExponentialBackoff(cap=1.0, base=0.05), settings.worker_redis_retry_seconds, retried)
    # `retry` alone only covers connecting: redis-py retries a command that was sent, or a pipeline, only
    # for the errors listed here. Without them a command in flight when Redis went away (arq's poll, in
    # tests/workers/test_redis_loss.py) failed at once and ended the worker, budget or not (CI, scenario 3).
    rs.retry_on_error = list(retried)
    return rs


class DeadlineRetry(Retry):
    """redis-py's Retry bounded by time since the first failure instead of by a count of attempts.

    A command retried after its connection dropped reconnects through this same object (redis-py's
    connect() runs its own retry loop), so counted attempts multiply: 34 command retries, each reconnecting
    for up to the whole budget, kept a worker waiting a quarter of an hour instead of 30 s. With a deadline,
    the command's loop gives up once the budget is spent, whatever the loops inside it did meanwhile."""

    __slots__ = ("_budget",)

    def __init__(self, backoff: AbstractBackoff, budget: float, supported_errors: tuple[type[Exception], ...]) -> None:
        super().__init__(backoff, -1, supported_errors)  # type: ignore[arg-type]
        self._budget = budget

    async def call_with_retry(self, do: Callable[[], Awaitable[T]], fail: Callable[[RedisError], Any]) -> T:
        self._backoff.reset()  # type: ignore[no-untyped-call]
        failures = 0
        deadline: float | None = None
        while True:
            try:
                return await do()
            except self._supported_errors as error:
                failures += 1
                await fail(error)
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self._budget
                if now >= deadline:
                    raise
                await asyncio.sleep(min(self._backoff.compute(failures), deadline - now))


# arq's create_pool sets no read timeout: a Redis that accepts but never answers (paused, partitioned)
# would hang every caller. Requests fail fast instead, and workers retry within their budget.
SOCKET_TIMEOUT_SECONDS = 2.0


async def connect_redis(settings: Settings, *, for_worker: bool = False) -> ArqRedis:
    pool = await create_pool(worker_redis_settings(settings) if for_worker else redis_settings(settings))
    pool.connection_pool.connection_kwargs["socket_timeout"] = SOCKET_TIMEOUT_SECONDS
    await pool.connection_pool.disconnect()  # the connection made for create_pool's ping had none
    pool.connection_pool = bounded_pool(pool.connection_pool, settings)
    return pool
