"""A fire claimed late (a saturated pool, a worker back from an outage): late within its catch-up window it runs; once
a later fire is due too, the job's catch-up policy decides over all of them (`latest`: the latest runs, once)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from app.data.jobs import Job
from app.data.runs import Run
from app.data.skipped_fires import SkippedFire
from app.engine import scheduler
from app.engine.fires import fire_job
from app.platform.runtime import Runtime
from tests.factories import make_job
from tests.support.engine import skipped_fires, worker_ctx

pytestmark = pytest.mark.postgres

T0 = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)


def at(rt: Runtime, now: datetime) -> Runtime:
    return Runtime(settings=rt.settings, redis=rt.redis, clock=lambda: now)


async def test_a_fire_claimed_after_the_next_came_due_gives_way_to_that_next_one(orm: Runtime) -> None:
    await make_job(id="busy", schedule="@every 1s", payload={"seconds": 0})
    fire = await scheduler.reconcile_job(at(orm, T0 - timedelta(milliseconds=500)), await Job.get(id="busy"))
    assert fire == T0
    # The pool got to it 1.3 s late: T0+1s is due already; it runs, at once, and T0 does not (never two on each
    # other's heels), recorded with its reason.
    await fire_job(worker_ctx(at(orm, T0 + timedelta(seconds=1.3))), "busy", fire.isoformat())
    assert (await Job.get(id="busy")).next_run_at == T0 + timedelta(seconds=1)
    await fire_job(worker_ctx(at(orm, T0 + timedelta(seconds=1.4))), "busy", (T0 + timedelta(seconds=1)).isoformat())
    assert [r.fire_at for r in await Run.filter(job_id="busy").order_by("id")] == [T0 + timedelta(seconds=1)]
    assert (await Job.get(id="busy")).next_run_at == T0 + timedelta(seconds=2)
    assert await skipped_fires("busy") == {"cancelled_by_policy": 1}


async def test_a_fire_claimed_late_within_its_window_before_the_next_is_due_runs(orm: Runtime) -> None:
    await make_job(id="slow", schedule="@every 10s", payload={"seconds": 0}, catch_up_policy="none")
    fire = await scheduler.reconcile_job(at(orm, T0 - timedelta(milliseconds=500)), await Job.get(id="slow"))
    assert fire == T0
    await fire_job(worker_ctx(at(orm, T0 + timedelta(seconds=3.2))), "slow", fire.isoformat())
    assert [r.fire_at for r in await Run.filter(job_id="slow")] == [T0]
    assert (await Job.get(id="slow")).next_run_at == T0 + timedelta(seconds=10)
    assert await skipped_fires("slow") == {}


async def test_a_fire_claimed_several_intervals_late_runs_only_the_latest_due_one(orm: Runtime) -> None:
    await make_job(id="busier", schedule="@every 1s", payload={"seconds": 0})
    fire = await scheduler.reconcile_job(at(orm, T0 - timedelta(milliseconds=500)), await Job.get(id="busier"))
    assert fire == T0
    await fire_job(worker_ctx(at(orm, T0 + timedelta(seconds=3.2))), "busier", fire.isoformat())
    # T0 .. T0+2s are dropped, T0+3s (due) runs next: a busy pool never gets a burst of catch-ups.
    assert (await Job.get(id="busier")).next_run_at == T0 + timedelta(seconds=3)
    assert await Run.filter(job_id="busier").count() == 0
    [skipped] = await SkippedFire.filter(job_id="busier")
    assert (skipped.fire_at, skipped.last_fire_at, skipped.count, skipped.reason) == (
        T0,
        T0 + timedelta(seconds=2),
        3,
        "cancelled_by_policy",
    )


async def test_with_catch_up_none_none_of_the_fires_due_runs(orm: Runtime) -> None:
    await make_job(id="strict", schedule="@every 1s", payload={"seconds": 0}, catch_up_policy="none")
    fire = await scheduler.reconcile_job(at(orm, T0 - timedelta(milliseconds=500)), await Job.get(id="strict"))
    assert fire == T0
    await fire_job(worker_ctx(at(orm, T0 + timedelta(seconds=3.2))), "strict", fire.isoformat())
    assert await Run.filter(job_id="strict").count() == 0
    # T0 .. T0+3s are all dropped: the job goes on with its next fire.
    assert (await Job.get(id="strict")).next_run_at == T0 + timedelta(seconds=4)
    assert await skipped_fires("strict") == {"cancelled_by_policy": 4}
    assert (await Job.get(id="strict")).last_skip_reason == "cancelled_by_policy"
