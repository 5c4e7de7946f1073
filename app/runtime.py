"""What a service call needs besides its arguments: settings, the Redis pool and a clock."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from arq.connections import ArqRedis, RedisSettings, create_pool
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.config import Settings
from app.redis_pool import bounded_pool
from app.timefmt import utcnow


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
    """A worker waits out a Redis restart instead of dying: each command retries with backoff for
    about WORKER_REDIS_RETRY_SECONDS before it gives up."""
    rs = RedisSettings.from_dsn(settings.redis_url)
    rs.conn_timeout = 2
    attempts = _attempts_lasting(settings.worker_redis_retry_seconds, base=0.05, cap=1.0)
    # OSError too: a stopped Redis refuses the connection with a plain ConnectionRefusedError, which
    # redis-py's default (its own ConnectionError and TimeoutError) would not retry at all.
    retried = (RedisConnectionError, RedisTimeoutError, OSError)
    rs.retry = Retry(ExponentialBackoff(cap=1.0, base=0.05), attempts, supported_errors=retried)  # type: ignore[arg-type]
    # `retry` alone only covers connecting: redis-py retries a command that was sent, or a pipeline, only
    # for the errors listed here. Without them a command in flight when Redis went away (arq's poll, in
    # tests/workers/test_redis_loss.py) failed at once and ended the worker, budget or not (CI, scenario 3).
    rs.retry_on_error = list(retried)
    return rs


def _attempts_lasting(seconds: float, *, base: float, cap: float) -> int:
    """How many retries of ExponentialBackoff(base, cap) it takes to have waited `seconds` in all."""
    waited, attempts = 0.0, 0
    while waited < seconds:
        attempts += 1
        waited += min(cap, base * 2**attempts)
    return max(1, attempts)


# arq's create_pool sets no read timeout: a Redis that accepts but never answers (paused, partitioned)
# would hang every caller. Requests fail fast instead, and workers retry within their budget.
SOCKET_TIMEOUT_SECONDS = 2.0


async def connect_redis(settings: Settings, *, for_worker: bool = False) -> ArqRedis:
    pool = await create_pool(worker_redis_settings(settings) if for_worker else redis_settings(settings))
    pool.connection_pool.connection_kwargs["socket_timeout"] = SOCKET_TIMEOUT_SECONDS
    await pool.connection_pool.disconnect()  # the connection made for create_pool's ping had none
    pool.connection_pool = bounded_pool(pool.connection_pool, settings)
    return pool
