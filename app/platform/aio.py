"""Task helpers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import TypeVar

from redis.exceptions import RedisError

log = logging.getLogger(__name__)
T = TypeVar("T")


async def cancel_and_wait(*tasks: asyncio.Task[object] | asyncio.Future[object], patience: float = 10.0) -> None:
    """Cancel until the tasks are really done.

    One cancel() is not always enough: in Python 3.11 a cancel that lands as an `asyncio.timeout` expires
    inside redis-py becomes a TimeoutError, which redis-py's retry swallows, and the task runs on.
    """
    pending = {t for t in tasks if not t.done()}
    deadline = asyncio.get_running_loop().time() + patience
    while pending and asyncio.get_running_loop().time() < deadline:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.25)
    if pending:
        log.error("%d task(s) ignored cancellation for %s s: %s", len(pending), patience, pending)


async def run_to_the_end(work: Coroutine[object, object, T]) -> T:
    """Await `work` to its end whatever cancellations arrive meanwhile (they are not lost: the caller is on its
    way out already, or the cancellation is raised once `work` is done)."""
    task = asyncio.ensure_future(work)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.cancelled():
                raise
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return task.result()


async def keep_listening(
    listen: Callable[[], Awaitable[None]], *, what: str, retry_delay: float, on_lost: Callable[[], None]
) -> None:
    """Run `listen` (a Redis pub/sub loop) until cancelled, again after each loss of Redis, `retry_delay` later;
    `on_lost` runs at once after each loss (what was published meanwhile will never arrive)."""
    while True:
        try:
            await listen()
        except asyncio.CancelledError:
            raise
        except (RedisError, OSError):
            on_lost()
            log.warning("%s: Redis subscription lost; retrying in %s s", what, retry_delay)
            await asyncio.sleep(retry_delay)
