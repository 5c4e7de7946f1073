"""A fire claimed late by a busy worker pool: the next fire, already due, still runs (once)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from app.data.jobs import Job
from app.data.runs import Run
from app.engine import scheduler
from app.engine.fires import fire_job
from app.platform.runtime import Runtime
from tests.factories import make_job
from tests.support.engine import worker_ctx

pytestmark = pytest.mark.postgres

T0 = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)


def at(rt: Runtime, now: datetime) -> Runtime:
    return Runtime(settings=rt.settings, redis=rt.redis, clock=lambda: now)


async def test_a_fire_claimed_after_the_next_came_due_schedules_that_next_one(orm: Runtime) -> None:
    await make_job(id="busy", schedule="@every 1s", payload={"seconds": 0})
    fire = await scheduler.reconcile_job(at(orm, T0 - timedelta(milliseconds=500)), await Job.get(id="busy"))
    assert fire == T0
    # The pool got to it 1.3 s late: T0+1s is due already and must not be skipped.
    await fire_job(worker_ctx(at(orm, T0 + timedelta(seconds=1.3))), "busy", fire.isoformat())
    assert (await Job.get(id="busy")).next_run_at == T0 + timedelta(seconds=1)
    await fire_job(worker_ctx(at(orm, T0 + timedelta(seconds=1.4))), "busy", (T0 + timedelta(seconds=1)).isoformat())
    assert [r.fire_at for r in await Run.filter(job_id="busy").order_by("id")] == [T0, T0 + timedelta(seconds=1)]
    assert (await Job.get(id="busy")).next_run_at == T0 + timedelta(seconds=2)


async def test_a_fire_claimed_several_intervals_late_runs_only_the_latest_due_one(orm: Runtime) -> None:
    await make_job(id="busier", schedule="@every 1s", payload={"seconds": 0})
    fire = await scheduler.reconcile_job(at(orm, T0 - timedelta(milliseconds=500)), await Job.get(id="busier"))
    assert fire == T0
    await fire_job(worker_ctx(at(orm, T0 + timedelta(seconds=3.2))), "busier", fire.isoformat())
    # T0+1s and T0+2s are dropped, T0+3s (due) runs next: a busy pool never gets a burst of catch-ups.
    assert (await Job.get(id="busier")).next_run_at == T0 + timedelta(seconds=3)
