"""redis-py 5.3.1: a retry policy bounded by time, and pools rebuilt from the one a client was made with.

Relied on (pinned by tests/adapters/test_redis_contract.py):
- `Retry.__init__(backoff, retries, supported_errors)` keeps them as `_backoff` and `_supported_errors`, and
  redis-py runs every command and every reconnect through `call_with_retry(do, fail)`;
- a `ConnectionPool` keeps what it was built with as `connection_class` and `connection_kwargs`, and a client
  sends every later command through whatever its `connection_pool` attribute holds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import AbstractBackoff
from redis.exceptions import RedisError

T = TypeVar("T")


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


def pool_like(
    pool: ConnectionPool, *, max_connections: int, timeout: float, read_timeout: float
) -> BlockingConnectionPool:
    """A pool of at most `max_connections` connections, configured as `pool` is (address, credentials, retries),
    whose commands wait up to `timeout` for a free connection and `read_timeout` for an answer."""
    kwargs: dict[str, Any] = {**pool.connection_kwargs, "socket_timeout": read_timeout}
    return BlockingConnectionPool(
        connection_class=pool.connection_class,
        max_connections=max_connections,
        timeout=timeout,  # type: ignore[arg-type]  # typed int, takes seconds
        **kwargs,
    )


async def use_pool(client: Redis, pool: ConnectionPool) -> None:
    """From now on `client` (one arq built, say) sends its commands through `pool`; the connections it had
    are closed."""
    await client.connection_pool.disconnect()
    client.connection_pool = pool
