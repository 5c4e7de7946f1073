"""The run wrapper's guarantees: no overlap after a lost lease, honest outcomes, nothing silently dropped."""

from __future__ import annotations

import asyncio
from typing import Any

from arq.constants import default_queue_name, in_progress_key_prefix, job_key_prefix

from app import queue
from app.data.jobs import Job
from app.data.runs import Run
from app.platform.redis_pool import connect_redis
from app.platform.runtime import Runtime
from app.runs import lease
from app.runs import service as runs_service
from tests.factories import make_job
from tests.support.servers import RedisServer
from workers.runner import execute
from workers.tasks import run_job


def ctx(rt: Runtime) -> dict[str, Any]:
    return {"runtime": rt, "job_try": 1}


async def begin(rt: Runtime, job: Job) -> Run:
    token = runs_service.new_token()
    assert await lease.acquire(rt.redis, job.id, token, rt.settings.lease_ttl_seconds)
    run = await runs_service.begin(rt, job=job, token=token, triggered_by="user:1", fire_at=None, attempt=1)
    assert run is not None
    return run


async def test_a_handler_is_cancelled_when_its_lease_moves_on(orm: Runtime) -> None:
    job = await make_job(id="usurped", type="test_block")
    run = await begin(orm, job)
    task = asyncio.create_task(execute(orm, job, run))
    await asyncio.sleep(0.1)
    await orm.redis.set(lease.key("usurped"), "someone-else")  # declared lost; a successor holds it
    await asyncio.wait_for(task, 5)
    await run.refresh_from_db()
    assert (run.result, run.details) == ("error", "lease lost")
    assert await lease.holder(orm.redis, "usurped") == "someone-else"  # not released by the loser


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
    await orm.redis.delete(lease.key("stranded"))  # the queued lease lapsed
    await run_job(ctx(orm), "stranded", token, "user:4")
    [run] = await Run.filter(job_id="stranded")
    assert (run.result, run.triggered_by) == ("error", "user:4")
    assert run.details == "not started: no worker took it within 60 s"


async def test_reaping_a_lost_run_removes_its_arq_leftovers(orm: Runtime) -> None:
    job = await make_job(id="killed")
    run = await begin(orm, job)
    arq_id = queue.run_id(run.token)
    # What a SIGKILLed worker leaves: the queue entry, the job and its in-progress marker.
    await orm.redis.zadd(default_queue_name, {arq_id: 1})
    await orm.redis.set(job_key_prefix + arq_id, b"x")
    await orm.redis.set(in_progress_key_prefix + arq_id, b"1")
    await orm.redis.delete(lease.key("killed"))
    later = Runtime(settings=orm.settings, redis=orm.redis, clock=lambda: run.started_at.replace(year=2100))
    assert await runs_service.reap_lost(later) == 1
    assert await orm.redis.zscore(default_queue_name, arq_id) is None
    assert await orm.redis.exists(job_key_prefix + arq_id, in_progress_key_prefix + arq_id) == 0


async def test_acquiring_is_idempotent_for_the_same_token_only(orm: Runtime) -> None:
    assert await lease.acquire(orm.redis, "j", "mine", 5)
    assert await lease.acquire(orm.redis, "j", "mine", 5)  # a client retry of our own acquire
    assert not await lease.acquire(orm.redis, "j", "theirs", 5)
