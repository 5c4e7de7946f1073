"""The safety nets every process runs (API or worker): the reaper of lost runs and the periodic reconcile.

Both are idempotent, so any number of processes may run them at once.
- The reaper closes the runs whose lease lapsed (their worker is gone) as `error` / `worker lost`. It looks every
  HEARTBEAT_SECONDS, and right after a lease it saw held is due to expire: a run whose worker was killed is
  closed about LEASE_TTL_SECONDS after its last renewal, whoever started it and wherever.
- The reconcile brings arq's fires in line with the job rows every RECONCILE_INTERVAL_SECONDS.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from app.engine import runs, scheduler
from app.platform.aio import cancel_and_wait
from app.platform.runtime import Runtime

log = logging.getLogger(__name__)


async def _reaper(rt: Runtime) -> None:
    delay = rt.settings.heartbeat_seconds
    while True:
        await asyncio.sleep(delay)
        try:
            delay = (await runs.reap_lost(rt)).next_pass
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("reaper failed; will retry")
            delay = rt.settings.heartbeat_seconds


async def _every(seconds: float, step: Callable[[], Awaitable[object]], name: str) -> None:
    while True:
        await asyncio.sleep(seconds)
        try:
            await step()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s failed; will retry", name)


def start(rt: Runtime) -> list[asyncio.Task[None]]:
    return [
        asyncio.create_task(_reaper(rt), name="reaper"),
        asyncio.create_task(
            _every(rt.settings.reconcile_interval_seconds, lambda: scheduler.reconcile_all(rt), "reconcile"),
            name="reconcile",
        ),
    ]


async def stop(tasks: list[asyncio.Task[None]]) -> None:
    await cancel_and_wait(*tasks)
