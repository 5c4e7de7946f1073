"""reconcile_all works in batches (one pipeline, one transaction per batch) with reconcile_job's outcome."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from arq.constants import default_queue_name

from app.data.jobs import Job
from app.engine import scheduler
from app.platform.runtime import Runtime
from tests.factories import make_job

pytestmark = pytest.mark.postgres

T0 = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)


def at(rt: Runtime, now: datetime) -> Runtime:
    return Runtime(settings=rt.settings, redis=rt.redis, clock=lambda: now)


async def queued(rt: Runtime) -> set[str]:
    return {i.decode() for i in await rt.redis.zrange(default_queue_name, 0, -1)}


async def test_new_jobs_are_scheduled_and_enqueued_and_disabled_ones_are_not(orm: Runtime) -> None:
    for i in range(3):
        await make_job(id=f"hourly-{i}", schedule="0 * * * *")
    await make_job(id="off", schedule="0 * * * *", enabled=False)
    rt = at(orm, T0 - timedelta(minutes=30))
    assert await scheduler.reconcile_all(rt) >= 4
    for i in range(3):
        assert (await Job.get(id=f"hourly-{i}")).next_run_at == T0
    assert (await Job.get(id="off")).next_run_at is None
    assert {scheduler.fire_id(f"hourly-{i}", T0) for i in range(3)} <= await queued(orm)
    # Again: nothing changes, nothing is enqueued twice.
    before = await queued(orm)
    await scheduler.reconcile_all(rt)
    assert await queued(orm) == before


async def test_a_fire_redis_lost_is_replaced_by_the_latest_missed_one(orm: Runtime) -> None:
    await make_job(id="lost", schedule="@every 1m")
    await scheduler.reconcile_all(at(orm, T0))
    assert (await Job.get(id="lost")).next_run_at == T0 + timedelta(minutes=1)
    await orm.redis.flushdb()  # the queue is gone while no worker ran
    await scheduler.reconcile_all(at(orm, T0 + timedelta(minutes=4, seconds=30)))
    assert (await Job.get(id="lost")).next_run_at == T0 + timedelta(minutes=4)
    assert scheduler.fire_id("lost", T0 + timedelta(minutes=4)) in await queued(orm)


async def test_a_row_moved_by_someone_else_meanwhile_is_left_to_them(orm: Runtime) -> None:
    job = await make_job(id="raced", schedule="@every 1m")
    await scheduler.reconcile_all(at(orm, T0))
    await orm.redis.flushdb()
    stale = await Job.get(id="raced")
    # Another process moves the row after this reconciler read it.
    await Job.filter(id="raced").update(next_run_at=T0 + timedelta(minutes=7))
    lost = await scheduler._move_many([(stale, T0 + timedelta(minutes=4))])
    assert lost == {job.id}
    assert (await Job.get(id="raced")).next_run_at == T0 + timedelta(minutes=7)
