"""What the run-lifecycle tests share: jobs created as a client creates them, and waits on their runs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from app.data.runs import Run
from app.jobs import service as jobs_service
from app.jobs.service import JobState
from app.platform.config import Settings
from app.platform.runtime import Runtime
from tests.factories import wait_until

ACTOR = "user:1"
FAR = "0 0 1 1 *"  # a schedule that does not fire during a test: its runs are triggered


def engine_settings(settings_factory: Callable[..., Settings], **overrides: object) -> Settings:
    """Standalone workers (no embedded one in the test process), started from the test's database and Redis."""
    base: dict[str, object] = {"embedded_worker": False, "worker_poll_delay": 0.02, "reconcile_interval_seconds": 1.0}
    base.update(overrides)
    return settings_factory(**base)


async def create(rt: Runtime, **fields: Any) -> JobState:
    """A job created through the service, as the REST body and the GraphQL input reach it."""
    data: dict[str, Any] = {"name": fields.get("id", "job"), "schedule": FAR, **fields}
    return await jobs_service.create(rt, data=data, actor=ACTOR)


async def runs_of(job_id: str) -> list[Run]:
    return list(await Run.filter(job_id=job_id).order_by("id"))


async def wait_for_runs(job_id: str, count: int, *, timeout: float = 20.0, closed: bool = True) -> list[Run]:
    """The job's runs once `count` of them exist (and are closed, unless `closed` is False)."""

    async def enough() -> bool:
        query = Run.filter(job_id=job_id)
        if closed:
            query = query.filter(completed_at__isnull=False)
        return await query.count() >= count

    await wait_until(enough, timeout=timeout, interval=0.01)
    return await runs_of(job_id)


async def is_running(rt: Runtime, job_id: str) -> bool:
    return (await jobs_service.get(rt, job_id=job_id)).running
