"""The Redis pool is bounded (REDIS_POOL_SIZE), and a command that finds every connection busy for
REDIS_POOL_TIMEOUT_SECONDS fails as an outage: reads fall back to the database, writes answer 503."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
from redis.asyncio import BlockingConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError

from app.platform.config import Settings
from app.platform.redis_pool import connect_redis
from tests.conftest import make_token, running_app
from tests.factories import make_job


async def test_the_pool_is_bounded_and_waits_at_most_its_timeout(settings_factory: Callable[..., Settings]) -> None:
    settings = settings_factory(redis_pool_size=3, redis_pool_timeout_seconds=0.2)
    redis = await connect_redis(settings)
    pool = redis.connection_pool
    try:
        assert isinstance(pool, BlockingConnectionPool) and pool.max_connections == 3
        pool.connection_kwargs["client_name"] = "bounded-pool-test"  # counted on the server below
        held = [await pool.get_connection() for _ in range(3)]
        assert not pool.can_get_connection()
        started = time.monotonic()
        with pytest.raises(RedisConnectionError, match="No connection available"):
            await redis.ping()
        assert 0.15 < time.monotonic() - started < 1.5

        # A command waiting for a connection gets the first one released.
        async def ping() -> bool:
            return bool(await redis.ping())

        waiting = asyncio.create_task(ping())
        await asyncio.sleep(0.05)
        assert not waiting.done()
        await pool.release(held.pop())
        assert await asyncio.wait_for(waiting, 1) is True
        for connection in held:
            await pool.release(connection)
        # 20 concurrent commands share the 3 connections instead of opening 20.
        assert await asyncio.gather(*(redis.ping() for _ in range(20))) == [True] * 20
        # Counted by Redis itself: the connections this pool ever opened that are still open.
        named = [c for c in await redis.client_list() if c.get("name") == "bounded-pool-test"]
        assert 1 <= len(named) <= 3
    finally:
        await redis.aclose()


async def test_an_exhausted_pool_is_an_outage_for_the_api(settings_factory: Callable[..., Settings]) -> None:
    settings = settings_factory(redis_pool_size=4, redis_pool_timeout_seconds=0.2, embedded_worker=False)
    auth = {"Authorization": f"Bearer {make_token(settings)}"}
    async with running_app(settings) as (app, client):
        await make_job(id="pooled")
        pool = app.state.runtime.redis.connection_pool
        held = []
        while pool.can_get_connection():
            held.append(await pool.get_connection())
        try:
            # Reads answer from the database, as they do while Redis is down.
            listed = await client.get("/api/jobs", headers=auth)
            assert listed.status_code == 200 and "pooled" in {j["id"] for j in listed.json()}
            triggered = await client.post("/api/jobs/pooled/trigger", headers=auth)
            assert triggered.status_code == 503, triggered.text
            assert triggered.json()["error"] == "unavailable"
        finally:
            for connection in held:
                await pool.release(connection)
        assert (await client.post("/api/jobs/pooled/trigger", headers=auth)).status_code == 200
