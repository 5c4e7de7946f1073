"""Task helpers."""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger(__name__)


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
