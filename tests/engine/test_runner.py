"""The run wrapper's guarantees: no overlap after a lost lease, honest outcomes, nothing silently dropped."""

from __future__ import annotations

import asyncio
import threading

import pytest
from arq.constants import default_queue_name, in_progress_key_prefix, job_key_prefix

from app.data.runs import Run
from app.engine import consumer, leases, runs, scheduler, threads, triggers
from app.job_types import registry
from app.platform.aio import cancel_and_wait
from app.platform.redis_pool import connect_redis
from app.platform.runtime import Runtime
from app.runs import service as runs_service
from tests.factories import make_job
from tests.support.engine import begin_run as begin
from tests.support.engine import execute
from tests.support.servers import RedisServer


async def test_a_handler_is_cancelled_when_its_lease_moves_on(orm: Runtime) -> None:
    job = await make_job(id="usurped", type="test_block")
    run = await begin(orm, job)
    task = asyncio.create_task(execute(orm, job, run))
    await asyncio.sleep(0.1)
    await orm.redis.set(leases.key("usurped"), "someone-else")  # declared lost; a successor holds it
    await asyncio.wait_for(task, 5)
    await run.refresh_from_db()
    assert (run.result, run.details) == ("error", "lease lost")
    assert await leases.holder(orm.redis, "usurped") == "someone-else"  # not released by the loser


async def test_a_handler_is_cancelled_when_redis_is_unreachable_for_a_lease_period(orm: Runtime) -> None:
    job = await make_job(id="cut-off", type="test_block")
    with RedisServer() as private:
        settings = orm.settings
        rt = Runtime(
            settings=settings, redis=await connect_redis(settings.model_copy(update={"redis_url": private.url}))
        )
        run = await begin(rt, job)
        task = asyncio.create_task(execute(rt, job, run))
        await asyncio.sleep(0.1)
        private.stop()
        started = asyncio.get_running_loop().time()
        await asyncio.wait_for(task, 10)
        took = asyncio.get_running_loop().time() - started
        await rt.redis.aclose()
    await run.refresh_from_db()
    assert (run.result, run.details) == ("error", "lease lost")
    print(f"handler cancelled {took:.2f} s after Redis went away (lease {settings.lease_ttl_seconds} s)")
    assert took <= settings.lease_ttl_seconds + settings.heartbeat_seconds


async def test_a_handlers_own_timeout_error_is_its_error_not_the_run_timeout(orm: Runtime) -> None:
    job = await make_job(id="impatient", type="test_own_timeout", timeout_seconds=30)
    await execute(orm, job, await begin(orm, job))
    [run] = await Run.filter(job_id="impatient")
    assert run.result == "error" and not run.details.startswith("Timed out after")  # type: ignore[union-attr]
    assert run.duration_ms is not None and run.duration_ms < 5000


async def test_a_trigger_nobody_took_in_time_is_recorded_not_dropped(orm: Runtime) -> None:
    await make_job(id="stranded")
    token = await runs_service.trigger(orm, job_id="stranded", actor="user:4")
    await orm.redis.delete(leases.key("stranded"))  # the queued lease lapsed
    raw = await triggers.pop(orm.redis, 1)
    assert raw is not None
    message = triggers.Message.decode(raw)
    assert message.token == token
    await consumer.run_trigger(orm, registry.run, raw, message)  # no reading of Redis's clock: checked first
    [run] = await Run.filter(job_id="stranded")
    assert (run.result, run.triggered_by) == ("error", "user:4")
    assert run.details == "not started: no worker took it within 60 s"


async def test_reaping_a_lost_run_removes_its_arq_leftovers(orm: Runtime) -> None:
    job = await make_job(id="killed")
    fire_at = orm.now().replace(microsecond=0)
    run = await begin(orm, job, triggered_by=runs.SCHEDULER, fire_at=fire_at)
    arq_id = scheduler.fire_id("killed", fire_at)
    # What a SIGKILLed worker leaves: the queue entry, the job and its in-progress marker.
    await orm.redis.zadd(default_queue_name, {arq_id: 1})
    await orm.redis.set(job_key_prefix + arq_id, b"x")
    await orm.redis.set(in_progress_key_prefix + arq_id, b"1")
    await orm.redis.delete(leases.key("killed"))
    later = Runtime(settings=orm.settings, redis=orm.redis, clock=lambda: run.started_at.replace(year=2100))
    assert (await runs.reap_lost(later)).closed == 1
    assert await orm.redis.zscore(default_queue_name, arq_id) is None
    assert await orm.redis.exists(job_key_prefix + arq_id, in_progress_key_prefix + arq_id) == 0


async def test_acquiring_is_idempotent_for_the_same_token_only(orm: Runtime) -> None:
    assert await leases.acquire(orm.redis, "j", "mine", 5)
    assert await leases.acquire(orm.redis, "j", "mine", 5)  # a client retry of our own acquire
    assert not await leases.acquire(orm.redis, "j", "theirs", 5)


async def test_a_handler_thread_past_its_timeout_keeps_the_run_open_and_the_lease_held(orm: Runtime) -> None:
    """A thread cannot be cancelled: until it ends the run stays open and its lease renewed, so that no next run
    of the job can start beside it; then the timeout is recorded and the lease released."""
    threads.install(asyncio.get_running_loop())
    lease_ttl = orm.settings.lease_ttl_seconds
    job = await make_job(id="stubborn", type="test_thread", payload={"seconds": lease_ttl * 2.5}, timeout_seconds=0.2)
    run = await begin(orm, job)
    task = asyncio.create_task(execute(orm, job, run))
    # Past the timeout, and past more than a whole lease period: the lease was renewed meanwhile.
    await asyncio.sleep(lease_ttl * 1.5)
    assert not task.done()
    assert await leases.holder(orm.redis, "stubborn") == run.token
    assert (await Run.get(id=run.id)).completed_at is None
    await asyncio.wait_for(task, lease_ttl * 3)
    await run.refresh_from_db()
    assert (run.result, run.details) == ("error", "Timed out after 0.2 s")
    assert run.duration_ms is not None and run.duration_ms >= lease_ttl * 2500 * 0.95  # closed after the thread
    assert await leases.holder(orm.redis, "stubborn") is None


async def test_a_handler_thread_holds_its_run_through_a_shutdown_too(orm: Runtime) -> None:
    threads.install(asyncio.get_running_loop())
    job = await make_job(id="draining", type="test_thread", payload={"seconds": 1.0})
    run = await begin(orm, job)
    task = asyncio.create_task(execute(orm, job, run))
    await asyncio.sleep(0.2)
    task.cancel()  # the worker shuts down; a second cancel (arq's close) changes nothing
    await asyncio.sleep(0.1)
    task.cancel()
    await asyncio.sleep(0.3)
    assert not task.done() and await leases.holder(orm.redis, "draining") == run.token
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    await run.refresh_from_db()
    assert (run.result, run.details) == ("error", "worker shut down")
    assert run.duration_ms is not None and run.duration_ms >= 900
    assert await leases.holder(orm.redis, "draining") is None


async def test_only_calls_made_by_a_run_are_waited_for(orm: Runtime) -> None:
    threads.install(asyncio.get_running_loop())
    release = threading.Event()
    outside = asyncio.create_task(asyncio.to_thread(release.wait, 10))  # not a run's: nobody waits for it
    try:
        job = await make_job(id="quick-one", type="test_sleep")
        run = await begin(orm, job)
        await asyncio.wait_for(execute(orm, job, run), 5)
        await run.refresh_from_db()
        assert run.result == "success"
    finally:
        release.set()
        await outside


async def test_a_handler_slow_to_stop_keeps_its_run_open_through_a_timeout(orm: Runtime) -> None:
    lease_ttl = orm.settings.lease_ttl_seconds
    job = await make_job(
        id="slow-stop", type="test_stubborn", payload={"seconds": lease_ttl * 1.5}, timeout_seconds=0.2
    )
    run = await begin(orm, job)
    task = asyncio.create_task(execute(orm, job, run))
    await asyncio.sleep(lease_ttl)  # past the timeout, and past most of a lease: renewed meanwhile
    assert not task.done() and await leases.holder(orm.redis, "slow-stop") == run.token
    await asyncio.wait_for(task, lease_ttl * 3)
    await run.refresh_from_db()
    assert (run.result, run.details) == ("error", "Timed out after 0.2 s")
    assert await leases.holder(orm.redis, "slow-stop") is None


async def test_a_handler_slow_to_stop_under_repeated_shutdown_cancels_is_recorded_once_it_has_stopped(
    orm: Runtime,
) -> None:
    """A worker's shutdown cancels its runs again and again (cancel_and_wait): the run is still recorded, once the
    handler has stopped, and its lease is then released and no longer renewed."""
    job = await make_job(id="slow-shutdown", type="test_stubborn", payload={"seconds": 1.0})
    run = await begin(orm, job)
    task = asyncio.create_task(execute(orm, job, run))
    await asyncio.sleep(0.1)
    await cancel_and_wait(task, patience=10)
    assert task.cancelled()
    await run.refresh_from_db()
    assert (run.result, run.details) == ("error", "worker shut down")
    assert run.duration_ms is not None and run.duration_ms >= 900
    assert await leases.holder(orm.redis, "slow-shutdown") is None
    await asyncio.sleep(orm.settings.heartbeat_seconds * 2)
    assert await leases.holder(orm.redis, "slow-shutdown") is None  # no keeper left renewing it
    assert not [t for t in asyncio.all_tasks() if t.get_coro().__qualname__.startswith("_keep_lease")]  # type: ignore[union-attr]
