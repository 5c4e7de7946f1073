"""Scheduling rules at the service level, with an injected clock and the real fire/run functions."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import pytest
from arq.constants import default_queue_name

from app.data.jobs import Job
from app.data.runs import Run
from app.engine import leases, runs, scheduler
from app.engine.events import CHANNEL
from app.engine.fires import fire_job
from app.jobs import service as jobs_service
from app.platform.runtime import Runtime
from app.runs import service as runs_service
from tests.factories import make_job
from tests.support.engine import begin_run, run_next_trigger, skipped_fires, worker_ctx

# An hour boundary near real time: arq stamps queue entries with the wall clock.
pytestmark = pytest.mark.postgres

T0 = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)


def at(rt: Runtime, now: datetime) -> Runtime:
    return Runtime(settings=rt.settings, redis=rt.redis, clock=lambda: now)


async def queued_fires(rt: Runtime) -> list[str]:
    ids = await rt.redis.zrange(default_queue_name, 0, -1)
    return sorted(i.decode() for i in ids if i.decode().startswith("fire:"))


async def test_reconcile_enqueues_the_next_fire_and_reports_it(orm: Runtime) -> None:
    rt = at(orm, T0)
    job = await make_job(id="hourly", schedule="0 * * * *")
    fire = await scheduler.reconcile_job(rt, job)
    assert fire == T0 + timedelta(hours=1)
    assert (await Job.get(id="hourly")).next_run_at == fire
    assert await queued_fires(rt) == [scheduler.fire_id("hourly", fire)]
    # Idempotent: a second reconciler (another instance) changes nothing.
    assert await scheduler.reconcile_job(at(orm, T0 + timedelta(minutes=5)), await Job.get(id="hourly")) == fire
    assert len(await queued_fires(rt)) == 1


async def test_disabling_removes_the_pending_fire_and_a_stray_fire_never_runs(orm: Runtime) -> None:
    rt = at(orm, T0)
    job = await make_job(id="nightly", schedule="@daily")
    fire = await scheduler.reconcile_job(rt, job)
    assert fire is not None
    await jobs_service.stop(rt, job_id="nightly", actor="user:1")
    assert await queued_fires(rt) == []
    assert (await Job.get(id="nightly")).next_run_at is None
    await fire_job(worker_ctx(at(orm, fire)), "nightly", fire.isoformat())  # arrives anyway
    assert await Run.filter(job_id="nightly").count() == 0


async def test_a_fire_runs_once_however_often_it_is_delivered(orm: Runtime) -> None:
    job = await make_job(id="dup", schedule="@every 1m", payload={"seconds": 0})
    fire = await scheduler.reconcile_job(at(orm, T0), job)
    assert fire is not None
    rt = at(orm, fire)
    await asyncio.gather(*(fire_job(worker_ctx(rt), "dup", fire.isoformat()) for _ in range(5)))
    await fire_job(worker_ctx(rt), "dup", fire.isoformat())  # redelivered after its arq keys are gone
    runs = await Run.filter(job_id="dup")
    assert [(r.fire_at, r.triggered_by, r.result) for r in runs] == [(fire, "scheduler", "success")]
    assert (await Job.get(id="dup")).next_run_at == fire + timedelta(minutes=1)
    # The next fire is queued once (the delivered one stays in arq's queue: no worker consumed it here).
    assert scheduler.fire_id("dup", fire + timedelta(minutes=1)) in await queued_fires(rt)


async def test_a_fire_while_running_is_skipped_counted_and_the_next_is_scheduled(orm: Runtime) -> None:
    job = await make_job(id="busy", schedule="@every 1m")
    fire = await scheduler.reconcile_job(at(orm, T0), job)
    assert fire is not None
    assert await leases.acquire(orm.redis, "busy", "someone-else", 30)
    await fire_job(worker_ctx(at(orm, fire)), "busy", fire.isoformat())
    assert await Run.filter(job_id="busy").count() == 0
    assert await skipped_fires("busy") == {"overlap": 1}
    assert (await Job.get(id="busy")).next_run_at == fire + timedelta(minutes=1)


async def test_after_downtime_one_missed_fire_inside_the_grace_window_runs(orm: Runtime) -> None:
    job = await make_job(id="missed", schedule="@every 1m", payload={"seconds": 0})
    await scheduler.reconcile_job(at(orm, T0), job)  # next fire T0+1m
    await orm.redis.flushdb()  # all workers and the queue were gone...
    now = T0 + timedelta(minutes=4, seconds=30)  # ...for 4.5 min: fires T0+1m .. T0+4m were missed
    rt = at(orm, now)
    fire = await scheduler.reconcile_job(rt, await Job.get(id="missed"))
    assert fire == T0 + timedelta(minutes=4)  # only the latest missed one, once
    await fire_job(worker_ctx(rt), "missed", fire.isoformat())
    assert await Run.filter(job_id="missed").count() == 1
    assert (await Job.get(id="missed")).next_run_at == T0 + timedelta(minutes=5)


async def test_fires_missed_beyond_the_grace_window_are_skipped(orm: Runtime) -> None:
    job = await make_job(id="stale", schedule="0 * * * *")
    await scheduler.reconcile_job(at(orm, T0), job)  # next fire T0+1h
    await orm.redis.flushdb()
    now = T0 + timedelta(hours=1, minutes=30)  # T0+1h missed by 30 min, grace is 5 min
    fire = await scheduler.reconcile_job(at(orm, now), await Job.get(id="stale"))
    assert fire == T0 + timedelta(hours=2)


async def test_a_fire_that_comes_due_past_the_grace_window_is_skipped(orm: Runtime) -> None:
    job = await make_job(id="overdue", schedule="@every 1m", payload={"seconds": 0})
    fire = await scheduler.reconcile_job(at(orm, T0), job)  # T0+1m, still queued in arq
    assert fire is not None
    now = T0 + timedelta(minutes=30, seconds=10)  # no worker ran for half an hour
    rt = at(orm, now)
    assert await scheduler.reconcile_job(rt, await Job.get(id="overdue")) == fire  # arq still holds it
    await fire_job(worker_ctx(rt), "overdue", fire.isoformat())  # a worker finally takes it: far too late
    assert await Run.filter(job_id="overdue").count() == 0
    replacement = T0 + timedelta(minutes=30)  # the latest missed fire, inside the grace window
    assert (await Job.get(id="overdue")).next_run_at == replacement
    await fire_job(worker_ctx(rt), "overdue", replacement.isoformat())
    assert [r.fire_at for r in await Run.filter(job_id="overdue")] == [replacement]


async def test_reaper_closes_a_run_whose_lease_lapsed(orm: Runtime) -> None:
    job = await make_job(id="orphan")
    run = await begin_run(orm, job, triggered_by="scheduler")
    later = at(orm, run.started_at + timedelta(seconds=60))
    assert (await runs.reap_lost(later)).closed == 0  # lease still held: a healthy long run
    await orm.redis.delete(leases.key("orphan"))
    assert (await runs.reap_lost(later)).closed == 1
    await run.refresh_from_db()
    assert (run.result, run.details) == ("error", "worker lost")
    assert (await Job.get(id="orphan")).last_result == "error"
    # A late finish from the lost worker changes nothing (fenced).
    assert await runs.complete(orm, run=run, result="success", details="late") is False
    await run.refresh_from_db()
    assert run.details == "worker lost"


async def test_the_reaper_looks_again_right_after_a_held_lease_would_expire_and_not_sooner(orm: Runtime) -> None:
    heartbeat, ttl = orm.settings.heartbeat_seconds, orm.settings.lease_ttl_seconds
    assert (await runs.reap_lost(orm)).next_pass == heartbeat  # nothing open: every heartbeat
    job = await make_job(id="watched")
    run = await begin_run(orm, job)  # a fresh run holding its lease (LEASE_TTL_SECONDS from now)
    await orm.redis.pexpire(leases.key("watched"), int(heartbeat * 1000 / 4))  # its last renewal was long ago
    reaped = await runs.reap_lost(orm)
    assert reaped.closed == 0 and 0 < reaped.next_pass <= heartbeat / 4 + runs.EXPIRY_MARGIN_SECONDS
    await orm.redis.pexpire(leases.key("watched"), int(ttl * 1000))  # renewed: nothing to look at before a heartbeat
    assert (await runs.reap_lost(orm)).next_pass == heartbeat  # young as it is, its lease is its own
    await orm.redis.delete(leases.key("watched"))  # its worker is gone, but the run is younger than a heartbeat
    young = await runs.reap_lost(orm)
    assert young.closed == 0 and young.next_pass <= heartbeat + runs.EXPIRY_MARGIN_SECONDS
    later = at(orm, run.started_at + timedelta(seconds=heartbeat + 0.1))
    assert (await runs.reap_lost(later)).closed == 1


async def test_every_state_change_is_published(orm: Runtime) -> None:
    await make_job(id="loud", payload={"seconds": 0, "summary": "ok"})
    pubsub = orm.redis.pubsub()
    await pubsub.subscribe(CHANNEL)
    await pubsub.get_message(timeout=1)  # subscribe confirmation
    token = await runs_service.trigger(orm, job_id="loud", actor="user:3")
    assert (await run_next_trigger(orm)).token == token
    await jobs_service.stop(orm, job_id="loud", actor="user:3")
    await jobs_service.start(orm, job_id="loud", actor="user:3")
    seen = []
    while (message := await pubsub.get_message(timeout=0.5)) is not None:
        if message["type"] == "message":
            seen.append(json.loads(message["data"]))
    await pubsub.aclose()
    assert [e["event"] for e in seen] == ["run.queued", "run.started", "run.finished", "job.disabled", "job.enabled"]
    assert all(e["jobId"] == "loud" for e in seen)
    assert [e.get("running") for e in seen[:3]] == [True, True, False]
    assert seen[2]["result"] == "success"
