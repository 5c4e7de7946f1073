"""Later starts (retries, buffered fires) and cancel requests at their edges, driven in-process on real Redis and a
real database: a request that comes before its handler, a buffered fire of a stopped job, a start that cannot
begin, a retry withdrawn while a fire waits behind it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from arq.constants import default_queue_name
from arq.worker import Retry
from tortoise.exceptions import OperationalError

from app.data import jobs as jobs_table
from app.data.jobs import Job
from app.data.runs import Run
from app.engine import cancels, later, later_runs, leases
from app.engine import runs as runs_engine
from app.platform.runtime import Runtime
from tests.factories import make_job
from tests.support.engine import begin_run, skipped_fires, worker_ctx

FIRE = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=5)


async def test_a_cancel_that_comes_before_its_handler_starts_stops_it_when_it_starts() -> None:
    assert not cancels.deliver("starting-token", "cancelled by user:1")  # no handler here yet: kept a moment
    handler = asyncio.create_task(asyncio.sleep(30, result="finished"))
    watch = cancels.watch("starting-token", handler)
    try:
        assert watch.details == "cancelled by user:1"
        with pytest.raises(asyncio.CancelledError):
            await handler
    finally:
        cancels.unwatch("starting-token")
    other = asyncio.create_task(asyncio.sleep(0, result="ran"))
    assert cancels.watch("starting-token", other).details is None  # the request was for one start only
    cancels.unwatch("starting-token")
    assert await other == "ran"


async def test_a_buffered_fire_of_a_job_stopped_meanwhile_does_not_run(orm: Runtime) -> None:
    await make_job(id="stopped", schedule="@every 1s", enabled=False)
    assert await leases.acquire(orm.redis, "stopped", "buffered-token", 30)  # handed over as the run before ended
    await later_runs.start_later(worker_ctx(orm), "stopped", "buffered-token", "scheduler", FIRE.isoformat(), 1)
    assert await Run.filter(job_id="stopped").count() == 0
    assert await skipped_fires("stopped") == {"disabled": 1}
    assert await leases.holder(orm.redis, "stopped") is None


async def test_a_retry_of_a_job_stopped_meanwhile_still_runs(orm: Runtime) -> None:
    await make_job(id="finishing", enabled=False, payload={"seconds": 0})
    assert await leases.acquire(orm.redis, "finishing", "attempt-2", 30)
    await later_runs.start_later(worker_ctx(orm), "finishing", "attempt-2", "user:1", None, 2)
    [run] = await Run.filter(job_id="finishing")
    assert (run.attempt, run.result, run.triggered_by) == (2, "success", "user:1")


async def test_a_later_start_that_cannot_begin_is_tried_again_while_it_holds_its_lease(
    orm: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    await make_job(id="unlucky", payload={"seconds": 0})

    async def database_down(job_id: str) -> None:
        raise OperationalError("database is locked")

    monkeypatch.setattr(jobs_table, "get_or_none", database_down)
    assert await leases.acquire(orm.redis, "unlucky", "attempt-2", 30)
    with pytest.raises(Retry) as again:
        await later_runs.start_later(worker_ctx(orm), "unlucky", "attempt-2", "user:1", None, 2)
    assert again.value.defer_score == int(later_runs.RETRY_SECONDS * 1000)
    assert await leases.holder(orm.redis, "unlucky") == "attempt-2"  # still running, still its
    await leases.release(orm.redis, "unlucky", "attempt-2")  # its lease lapsed: no use trying again
    with pytest.raises(OperationalError):
        await later_runs.start_later(worker_ctx(orm), "unlucky", "attempt-2", "user:1", None, 2)


async def test_a_retry_withdrawn_by_a_cancel_hands_the_lease_to_the_fire_buffered_behind_it(orm: Runtime) -> None:
    await make_job(id="chain", type="test_fail", overlap="buffer_one")
    due = orm.now() + timedelta(minutes=5)
    assert await leases.acquire(orm.redis, "chain", "attempt-2", 600)  # waiting out its backoff
    await later.enqueue(orm.redis, [later.Later("chain", "attempt-2", "scheduler", FIRE, 2, due=due)])
    await orm.redis.set(leases.buffer_key("chain"), (FIRE + timedelta(seconds=1)).isoformat())  # a fire waits
    holder = await cancels.request(orm, "chain", "cancelled by user:1", by="user")
    assert holder == "attempt-2"
    assert await cancels.withdraw(orm, "chain", holder, "cancelled by user:1")
    [run] = await Run.filter(job_id="chain")
    assert (run.attempt, run.result, run.details, run.fire_at) == (2, "error", "cancelled by user:1", FIRE)
    buffered = await leases.holder(orm.redis, "chain")
    assert buffered not in (None, "attempt-2")  # the buffered fire holds the job now, and is queued to start
    queued = [i.decode() for i in await orm.redis.zrange(default_queue_name, 0, -1)]
    assert queued == [later.arq_job_id(str(buffered))]


async def test_a_worker_lost_mid_attempt_counts_as_a_failed_attempt_and_the_next_one_is_queued(orm: Runtime) -> None:
    retry = {"maxAttempts": 3, "backoff": 30.0, "maxBackoff": 30.0, "multiplier": 1.0, "jitter": 0.0}
    job = await make_job(id="orphaned", retry=retry)
    run = await begin_run(orm, job, triggered_by="user:1")
    await orm.redis.delete(leases.key("orphaned"))  # its worker was killed: nobody renews the lease
    later_on = Runtime(settings=orm.settings, redis=orm.redis, clock=lambda: run.started_at + timedelta(seconds=60))
    assert (await runs_engine.reap_lost(later_on)).closed == 1
    [closed] = await Run.filter(job_id="orphaned")
    assert (closed.attempt, closed.result, closed.details) == (1, "error", "worker lost")
    # The next attempt holds the job (still running) and waits in arq's queue for its backoff.
    holder = await leases.holder(orm.redis, "orphaned")
    assert holder is not None and holder != run.token
    [queued] = [i.decode() for i in await orm.redis.zrange(default_queue_name, 0, -1, withscores=False)]
    assert queued == later.arq_job_id(holder)
    due = await orm.redis.zscore(default_queue_name, queued)
    assert due == pytest.approx((later_on.now() + timedelta(seconds=30)).timestamp() * 1000, abs=2)
    assert (await Job.get(id="orphaned")).consecutive_failures == 0  # not exhausted: not yet a failure
