"""What a service call needs besides its arguments: settings, the Redis pool and a clock."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from arq.connections import ArqRedis, RedisSettings, create_pool

from app.config import Settings
from app.timefmt import utcnow


@dataclass
class Runtime:
    settings: Settings
    redis: ArqRedis
    clock: Callable[[], datetime] = field(default=utcnow)

    def now(self) -> datetime:
        return self.clock()


def redis_settings(settings: Settings) -> RedisSettings:
    # One quick attempt: a caller waiting on a dead Redis should get a 503, not a long retry loop.
    rs = RedisSettings.from_dsn(settings.redis_url)
    rs.conn_timeout = 2
    rs.conn_retries = 1
    rs.conn_retry_delay = 0
    return rs


async def connect_redis(settings: Settings) -> ArqRedis:
    return await create_pool(redis_settings(settings))
