"""redis-py 5.3: a retry policy bounded by time, built on `Retry`'s internals.

Relied on (pinned by tests/adapters/test_redis_contract.py): `Retry.__init__(backoff, retries, supported_errors)`
keeps them as `_backoff` and `_supported_errors`, and redis-py runs every command and every reconnect through
`call_with_retry(do, fail)`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

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
