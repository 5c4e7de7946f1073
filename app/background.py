"""Periodic safety nets every process runs: the reaper of lost runs and the schedule reconcile."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from app.jobs import scheduler
from app.platform.aio import cancel_and_wait
from app.platform.runtime import Runtime
from app.runs import service as runs_service

log = logging.getLogger(__name__)


async def _every(seconds: float, step: Callable[[], Awaitable[object]], name: str) -> None:
    while True:
        await asyncio.sleep(seconds)
        try:
            await step()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s failed; will retry", name)


def start_background_loops(rt: Runtime) -> list[asyncio.Task[None]]:
    """The reaper and the periodic reconcile: idempotent, so every process may run them."""
    return [
        asyncio.create_task(_every(rt.settings.heartbeat_seconds, lambda: runs_service.reap_lost(rt), "reaper")),
        asyncio.create_task(
            _every(rt.settings.reconcile_interval_seconds, lambda: scheduler.reconcile_all(rt), "reconcile")
        ),
    ]


async def stop_background_loops(tasks: list[asyncio.Task[None]]) -> None:
    await cancel_and_wait(*tasks)
