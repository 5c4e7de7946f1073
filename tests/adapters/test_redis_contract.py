"""What app/adapters/redis.py relies on in redis-py 5.3.1, pinned: `DeadlineRetry` keeps redis-py's `Retry`
state (`_backoff`, `_supported_errors`), and redis-py runs every command and every reconnect through
`call_with_retry(do, fail)`, which it overrides. tests/engine/test_redis_loss.py runs it against a Redis that goes
away; here, a budget that ends the retries on time."""

from __future__ import annotations

import asyncio
import inspect
import time

import pytest
from redis.asyncio.client import Redis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import ConstantBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from app.adapters.redis import DeadlineRetry, pool_like, use_pool
from app.platform.config import Settings
from app.platform.redis_pool import connect_redis
from tests.adapters.pins import check_version, digest

VERSION = "5.3.1"
RETRY_INIT = "cc62fcd81dd1c544"
RETRY_CALL = "0afbb6dfc34fdd0f"


@pytest.mark.sqlite_only  # no database involved
def test_the_version_is_the_one_the_adapter_was_written_for() -> None:
    check_version("redis", VERSION, "app/adapters/redis.py")


@pytest.mark.sqlite_only
def test_retry_keeps_what_deadline_retry_reads_and_overrides() -> None:
    assert digest(Retry.__init__) == RETRY_INIT, (
        "redis-py's Retry.__init__ changed: DeadlineRetry reads its _backoff and _supported_errors"
    )
    assert digest(Retry.call_with_retry) == RETRY_CALL, (
        "redis-py's Retry.call_with_retry changed: DeadlineRetry.call_with_retry replaces it, re-check it follows"
    )
    retry = DeadlineRetry(ConstantBackoff(0.01), 1.0, (RedisConnectionError,))
    assert isinstance(retry._backoff, ConstantBackoff) and retry._supported_errors == (RedisConnectionError,)


@pytest.mark.sqlite_only
def test_commands_and_reconnects_go_through_call_with_retry() -> None:
    assert "self.retry.call_with_retry" in inspect.getsource(AbstractConnection.connect)
    assert ".retry.call_with_retry" in inspect.getsource(Redis.execute_command)


@pytest.mark.sqlite_only
async def test_the_budget_bounds_the_retries_from_the_first_failure() -> None:
    attempts: list[float] = []

    async def refused() -> None:
        attempts.append(time.monotonic())
        raise RedisConnectionError("refused")

    async def fail(_: Exception) -> None:
        await asyncio.sleep(0)

    retry = DeadlineRetry(ConstantBackoff(0.05), 0.4, (RedisConnectionError,))
    started = time.monotonic()
    with pytest.raises(RedisConnectionError):
        await retry.call_with_retry(refused, fail)
    took = time.monotonic() - started
    assert 0.4 <= took < 0.4 + 0.3 and len(attempts) >= 5  # retried, and gave up once the budget was spent


@pytest.mark.sqlite_only  # Redis only
async def test_a_pool_like_another_keeps_its_address_and_a_client_given_it_uses_it(settings: Settings) -> None:
    client = await connect_redis(settings)
    original = client.connection_pool
    try:
        pool = pool_like(original, max_connections=3, timeout=0.5, read_timeout=1.5)
        assert pool.connection_class is original.connection_class and pool.max_connections == 3
        assert {k: v for k, v in pool.connection_kwargs.items() if k != "socket_timeout"} == {
            k: v for k, v in original.connection_kwargs.items() if k != "socket_timeout"
        }
        assert pool.connection_kwargs["socket_timeout"] == 1.5
        await use_pool(client, pool)
        assert client.connection_pool is pool
        assert await client.ping()
        assert len(pool._in_use_connections) + len(pool._available_connections) == 1  # the ping went through it
    finally:
        await client.aclose()
