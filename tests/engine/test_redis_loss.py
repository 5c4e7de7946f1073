"""A worker rides out Redis going away with commands in flight: real redis-server, real workers.

Connecting again is not enough: a command already sent when Redis dies (arq's poll, the claim of a job)
fails on its established connection, and until the worker retried those too, one such failure ended the
worker however long its WORKER_REDIS_RETRY_SECONDS (CI, scenario 3).
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis as sync_redis

from app.data.runs import Run
from app.platform.runtime import Runtime
from app.platform.timefmt import utcnow
from tests.factories import make_job, wait_until
from tests.support.processes import WorkerProcess
from tests.support.servers import RedisServer

pytestmark = pytest.mark.slow


async def test_a_standalone_worker_survives_redis_dying_with_its_commands_in_flight(
    orm: Runtime, tmp_path: Path
) -> None:
    # Fires go through arq's own poll and claim, the code whose commands were not retried. Once Redis is
    # back (empty), the worker's reconcile loop arms them again.
    await make_job(id="ticking", schedule="@every 1s", payload={"summary": "tick"})
    with RedisServer() as private:
        settings = orm.settings.model_copy(update={"redis_url": private.url, "reconcile_interval_seconds": 1.0})
        with WorkerProcess(settings, tmp_path, "survivor") as worker:
            assert worker.proc is not None
            await wait_until(lambda: _runs_since("ticking", datetime.min.replace(tzinfo=UTC), 1), timeout=15)
            admin = sync_redis.Redis.from_url(private.url)
            try:
                # Every command sent from here on waits in Redis, unanswered: the worker polls at least once
                # a second (WORKER_IDLE_POLL_SECONDS), so commands of arq's loop are in flight at the kill.
                admin.execute_command("CLIENT", "PAUSE", "3000", "ALL")
            finally:
                admin.close()
            await asyncio.sleep(2.0)
            private.kill()  # their connections drop, unanswered
            await asyncio.sleep(1.0)
            private.start()
            back = utcnow()
            # A worker whose loop died would still take a second or so to exit (arq's shutdown waits for Redis),
            # but it would fire nothing more: three fires after the restart take arq's loop at least 2 s.
            await wait_until(lambda: _runs_since("ticking", back, 3), timeout=20)
            assert worker.proc.poll() is None, worker.tail(60)
            assert "exiting" not in worker.tail(200)


async def _runs_since(job_id: str, since: datetime, count: int) -> bool:
    return await Run.filter(job_id=job_id, started_at__gte=since, completed_at__isnull=False).count() >= count


async def test_a_worker_with_commands_in_flight_gives_up_once_its_retry_budget_is_spent(
    orm: Runtime, tmp_path: Path
) -> None:
    """Retrying a command that was in flight reconnects through the same retry policy: counted attempts
    would multiply (each of them reconnecting for a whole budget). The budget is time, and it holds."""
    budget = 2.0
    with RedisServer() as private:
        settings = orm.settings.model_copy(update={"redis_url": private.url})
        with WorkerProcess(settings, tmp_path, "impatient", worker_redis_retry_seconds=budget) as worker:
            assert worker.proc is not None
            await asyncio.sleep(1.0)
            admin = sync_redis.Redis.from_url(private.url)
            try:
                admin.execute_command("CLIENT", "PAUSE", "3000", "ALL")
            finally:
                admin.close()
            await asyncio.sleep(1.5)  # arq's poll is in flight
            private.kill()  # and Redis does not come back
            gone = time.monotonic()
            code = await asyncio.to_thread(worker.wait, 120)
            took = time.monotonic() - gone
    print(f"worker gave up {took:.1f} s after Redis went away (budget {budget} s)")
    assert code == 1, worker.tail(60)
    assert "Redis unreachable for longer than WORKER_REDIS_RETRY_SECONDS" in worker.tail(60)
    # The poll's retries (the budget, the last attempt's connect timeout), then arq's shutdown, which needs
    # Redis and waits out a budget of its own. Counted attempts took far longer here.
    assert took < 4 * budget + 4
