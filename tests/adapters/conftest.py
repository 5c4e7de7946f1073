"""A Redis of its own for the arq adapter's tests, which read and write arq's keys directly."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from arq.connections import ArqRedis

from app.platform.config import Settings
from app.platform.redis_pool import connect_redis, job_deserializer, job_serializer
from tests.support.servers import RedisServer


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[ArqRedis]:
    with RedisServer() as private:
        pool = await connect_redis(settings.model_copy(update={"redis_url": private.url}), for_worker=True)
        try:
            yield pool
        finally:
            await pool.aclose()


# What every worker of ours reads arq's records with (app.engine.worker.options), as the `redis` pool writes them.
SERIALIZERS = {"job_serializer": job_serializer, "job_deserializer": job_deserializer}
