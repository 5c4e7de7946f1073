"""Fires armed ahead (app.engine.fires): enqueued FIRE_LEAD_SECONDS early, claimed during the lead, started on
their instant in one batch per instant. Real Redis, real database, real arq worker processes."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from arq.constants import default_queue_name, retry_key_prefix

from app.data.jobs import Job
from app.data.runs import Run
from app.engine import fires, leases, scheduler
from app.engine import runs as runs_engine
from app.engine.fires import fire_job
from app.jobs import service as jobs_service
from app.platform.config import Settings
from app.platform.runtime import Runtime
from tests.engine import test_engine_processes as engine_processes
from tests.engine.test_late_claims import T0, at
from tests.factories import make_job, wait_until
from tests.support.engine import insert_fire_runs, skipped_fires, worker_ctx
from tests.support.processes import WorkerProcess

pytestmark = pytest.mark.postgres


def soon(seconds: float) -> datetime:
    """A whole-millisecond instant `seconds` from now (fire ids and queue scores are milliseconds)."""
    moment = datetime.now(UTC) + timedelta(seconds=seconds)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


async def armed_at(rt: Runtime, job_id: str, fire: datetime) -> float:
    """The queue score (epoch seconds) arq holds the fire under."""
    score = await rt.redis.zscore(default_queue_name, scheduler.fire_id(job_id, fire))
    assert score is not None
    return float(score) / 1000


async def test_a_fire_is_enqueued_its_lead_ahead_capped_at_half_its_interval(
    settings_factory: Callable[..., Settings], orm: Runtime
) -> None:
    rt = at(Runtime(settings=settings_factory(fire_lead_seconds=2.0), redis=orm.redis), T0)
    await make_job(id="slow", schedule="@every 1m")
    await make_job(id="fast", schedule="@every 1s")
    await make_job(id="cron", schedule="*/5 * * * *")
    await scheduler.reconcile_all(rt)  # the batched path
    slow = await scheduler.reconcile_job(rt, await Job.get(id="slow"))  # and the single one agree
    assert slow == T0 + timedelta(minutes=1)
    assert await armed_at(rt, "slow", slow) == slow.timestamp() - 2.0
    assert await armed_at(rt, "cron", T0 + timedelta(minutes=5)) == (T0 + timedelta(minutes=5)).timestamp() - 2.0
    # An interval of 1 s: armed half a second ahead, so that each fire is armed after the previous instant.
    assert await armed_at(rt, "fast", T0 + timedelta(seconds=1)) == (T0 + timedelta(seconds=1)).timestamp() - 0.5
    # The claim enqueues the next fire with the same lead.
    claimed = await scheduler.claim_fire(
        at(rt, T0 + timedelta(seconds=0.6)), job_id="fast", fire_at=T0 + timedelta(seconds=1)
    )
    assert claimed is not None
    assert await armed_at(rt, "fast", T0 + timedelta(seconds=2)) == (T0 + timedelta(seconds=2)).timestamp() - 0.5


async def test_a_fire_taken_early_is_claimed_at_once_and_starts_on_its_instant(orm: Runtime) -> None:
    fire = soon(0.6)
    await make_job(id="punctual", schedule="@every 1s", payload={"seconds": 0}, next_run_at=fire)
    task = asyncio.create_task(fire_job(worker_ctx(orm), "punctual", fire.isoformat()))

    async def claimed() -> bool:
        return (await Job.get(id="punctual")).next_run_at != fire

    await wait_until(claimed, timeout=0.5, interval=0.005)
    assert datetime.now(UTC) < fire  # claimed during the lead...
    assert not await Run.filter(job_id="punctual").exists()  # ...but not started
    assert await leases.holder(orm.redis, "punctual") is None  # nor `running`
    await task
    [run] = await Run.filter(job_id="punctual")
    lag = (run.started_at - fire).total_seconds()
    print(f"armed fire started {lag * 1000:.1f} ms after its instant")
    # On the instant, never before it; the upper bound is generous (a shared machine), not a speed claim.
    assert 0 <= lag < 0.25
    assert (run.fire_at, run.result) == (fire, "success")


async def test_a_job_running_during_the_lead_but_not_at_the_instant_still_fires(orm: Runtime) -> None:
    fire = soon(0.5)
    await make_job(id="tight", schedule="@every 1s", payload={"seconds": 0}, next_run_at=fire)
    assert await leases.acquire(orm.redis, "tight", "previous-run", 30)
    task = asyncio.create_task(fire_job(worker_ctx(orm), "tight", fire.isoformat()))

    async def claimed() -> bool:
        return (await Job.get(id="tight")).next_run_at != fire

    await wait_until(claimed, timeout=0.4, interval=0.005)
    assert await leases.release(orm.redis, "tight", "previous-run")  # finishes before the instant
    await task
    assert [r.fire_at for r in await Run.filter(job_id="tight")] == [fire]
    assert await skipped_fires("tight") == {}


async def test_a_job_still_running_at_the_instant_skips_the_fire_and_counts_it(orm: Runtime) -> None:
    fire = soon(0.3)
    await make_job(id="overlap", schedule="@every 1s", payload={"seconds": 0}, next_run_at=fire)
    assert await leases.acquire(orm.redis, "overlap", "previous-run", 30)
    await fire_job(worker_ctx(orm), "overlap", fire.isoformat())
    assert datetime.now(UTC) >= fire
    assert await Run.filter(job_id="overlap").count() == 0
    assert await skipped_fires("overlap") == {"overlap": 1}
    assert await leases.holder(orm.redis, "overlap") == "previous-run"  # untouched
    assert (await Job.get(id="overlap")).next_run_at == fire.replace(microsecond=0) + timedelta(seconds=1)


@pytest.mark.parametrize("change", ["stop", "delete"])
async def test_a_job_stopped_or_deleted_during_the_lead_does_not_fire(orm: Runtime, change: str) -> None:
    fire = soon(0.6)
    await make_job(id="changed", schedule="@every 1m", payload={"seconds": 0}, next_run_at=fire)
    task = asyncio.create_task(fire_job(worker_ctx(orm), "changed", fire.isoformat()))

    async def claimed() -> bool:
        return (await Job.get(id="changed")).next_run_at != fire

    await wait_until(claimed, timeout=0.5, interval=0.005)
    assert datetime.now(UTC) < fire  # armed, not started: what an admin sees as "not running"
    if change == "stop":
        await jobs_service.stop(orm, job_id="changed", actor="user:1")
    else:
        await jobs_service.delete(orm, job_id="changed", actor="user:1")
    await task
    assert datetime.now(UTC) >= fire
    assert await Run.filter(job_id="changed").count() == 0
    assert await leases.holder(orm.redis, "changed") is None


async def test_fires_due_on_the_same_instant_start_in_one_batch(orm: Runtime) -> None:
    fire = soon(0.8)
    ids = [f"burst-{i:02d}" for i in range(20)]
    for job_id in ids:
        await make_job(id=job_id, schedule="@every 1s", payload={"seconds": 0}, next_run_at=fire)
    await asyncio.gather(*(fire_job(worker_ctx(orm), job_id, fire.isoformat()) for job_id in ids))
    runs = await Run.filter(fire_at=fire)
    assert sorted(r.job_id for r in runs) == ids
    # One batch: one start time for all of them, taken on the instant.
    assert len({r.started_at for r in runs}) == 1
    assert runs[0].started_at >= fire
    assert {r.result for r in runs} == {"success"}
    assert await leases.holders(orm.redis, ids) == dict.fromkeys(ids)  # every lease released


async def test_a_batch_with_a_duplicate_fire_starts_it_exactly_once(orm: Runtime) -> None:
    job = await make_job(id="twice", schedule="@every 1m")
    ran = await make_job(id="ran", schedule="@every 1m")
    other = await make_job(id="other", schedule="@every 1m")
    rt = at(orm, T0)
    # "ran" already has its run record for this fire (a redelivery after it started elsewhere).
    [earlier] = await insert_fire_runs(rt, [(ran, "first-token", T0)])
    assert earlier is not None
    batch = [
        fires._Armed(job=job, fire_at=T0),
        fires._Armed(job=ran, fire_at=T0),
        fires._Armed(job=job, fire_at=T0),
        fires._Armed(job=other, fire_at=T0),
    ]
    runs = await fires.start_fires(rt, batch)
    assert [r is not None for r in runs] == [True, False, False, True]
    assert await Run.filter(job_id="twice", fire_at=T0).count() == 1
    assert await Run.filter(job_id="ran", fire_at=T0).count() == 1
    started = [r for r in runs if r is not None]
    assert {r.job_id: r.token for r in started} == {"twice": batch[0].token, "other": batch[3].token}
    # The leases are the started runs' tokens; the duplicate's was given back, not left `running`.
    assert await leases.holders(orm.redis, ["twice", "ran", "other"]) == {
        "twice": batch[0].token,
        "ran": None,
        "other": batch[3].token,
    }
    assert await skipped_fires("twice") == {}  # a duplicate is not a skip
    # The records are real rows the completion path closes as usual.
    for run in started:
        assert await runs_engine.complete(rt, run=run, result="success", details="ok")
    assert {r.job_id: r.result for r in await Run.filter(fire_at=T0)} == {
        "twice": "success",
        "ran": None,
        "other": "success",
    }


async def test_a_fire_cancelled_while_armed_is_handed_back_and_runs_once_later(orm: Runtime) -> None:
    fire = soon(3.0)
    job = await make_job(id="handed", schedule="@every 1m", payload={"seconds": 0}, next_run_at=fire)
    following = scheduler.schedule_of(job, orm).next_after(fire)
    # As arq has it while the worker runs the fire: tried once.
    await orm.redis.set(retry_key_prefix + scheduler.fire_id("handed", fire), 1)
    task = asyncio.create_task(fire_job(worker_ctx(orm), "handed", fire.isoformat()))

    async def claimed() -> bool:
        return (await Job.get(id="handed")).next_run_at == following

    await wait_until(claimed, timeout=2)
    assert (await scheduler.fires_pending(orm, [("handed", following)]))[0]
    task.cancel()  # the worker shuts down while the fire waits for its instant
    with pytest.raises(asyncio.CancelledError):
        await task
    assert datetime.now(UTC) < fire
    assert await Run.filter(job_id="handed").count() == 0
    assert (await Job.get(id="handed")).next_run_at == fire  # handed back...
    assert not (await scheduler.fires_pending(orm, [("handed", following)]))[0]  # ...the next dropped...
    assert not await orm.redis.exists(retry_key_prefix + scheduler.fire_id("handed", fire))  # ...and deliverable
    assert fires.starter().armed == 0
    await fire_job(worker_ctx(orm), "handed", fire.isoformat())  # the next worker takes it
    [run] = await Run.filter(job_id="handed")
    assert run.fire_at == fire and run.started_at >= fire
    assert (await Job.get(id="handed")).next_run_at == following


async def test_a_fire_disabled_while_armed_stays_given_up_when_handed_back(orm: Runtime) -> None:
    fire = soon(3.0)
    await make_job(id="stopped", schedule="@every 1m", next_run_at=fire)
    task = asyncio.create_task(fire_job(worker_ctx(orm), "stopped", fire.isoformat()))

    async def claimed() -> bool:
        return (await Job.get(id="stopped")).next_run_at != fire

    await wait_until(claimed, timeout=2)
    await Job.filter(id="stopped").update(enabled=False, next_run_at=None)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    job = await Job.get(id="stopped")
    assert (job.enabled, job.next_run_at) == (False, None)


async def test_claims_made_together_keep_one_winner_per_fire(orm: Runtime) -> None:
    rt = at(orm, T0 - timedelta(milliseconds=400))
    ids = [f"together-{i}" for i in range(10)]
    for job_id in ids:
        await make_job(id=job_id, schedule="@every 1s", next_run_at=T0)
    # Every fire claimed three times at the same moment (they share batches), and one stale claim.
    claims = [scheduler.claim_fire(rt, job_id=job_id, fire_at=T0) for job_id in ids for _ in range(3)]
    stale = scheduler.claim_fire(rt, job_id=ids[0], fire_at=T0 - timedelta(seconds=1))
    *won, lost = await asyncio.gather(*claims, stale)
    assert lost is None
    assert sorted(job.id for job in won if job is not None) == ids
    following = T0 + timedelta(seconds=1)
    assert {j.next_run_at for j in await Job.filter(id__in=ids)} == {following}
    assert all(await scheduler.fires_pending(orm, [(job_id, following) for job_id in ids]))


async def test_runs_finishing_together_close_once_each_and_the_newest_outcome_wins(orm: Runtime) -> None:
    rt = at(orm, T0)
    jobs = [await make_job(id=f"finish-{i}", schedule="@every 1m") for i in range(5)]
    runs = await insert_fire_runs(rt, [(job, f"token-{i}", T0) for i, job in enumerate(jobs)])
    older = await insert_fire_runs(
        at(orm, T0 - timedelta(minutes=1)), [(jobs[0], "old-token", T0 - timedelta(minutes=1))]
    )
    assert all(r is not None for r in [*runs, *older])
    wanted = [leases.Want(job.id, f"token-{i}", leases.ACQUIRE) for i, job in enumerate(jobs)]
    assert all(await leases.take(orm.redis, wanted, 30))
    later = at(orm, T0 + timedelta(seconds=2))
    outcomes = await asyncio.gather(
        *(runs_engine.complete(later, run=r, result="success", details="ok") for r in runs if r is not None),
        # The same run closed twice at once (a late writer), and an older run of job 0 finishing last.
        runs_engine.complete(later, run=runs[1], result="error", details="late"),  # type: ignore[arg-type]
        runs_engine.complete(later, run=older[0], result="error", details="older"),  # type: ignore[arg-type]
    )
    assert outcomes == [True] * 5 + [False, True]
    assert {r.job_id: (r.result, r.details) for r in await Run.filter(fire_at=T0)} == {
        job.id: ("success", "ok") for job in jobs
    }
    job0 = await Job.get(id="finish-0")
    assert (job0.last_run_at, job0.last_result) == (T0, "success")  # not the older run's error
    assert await leases.holders(orm.redis, [j.id for j in jobs]) == {j.id: None for j in jobs}


# --- Real worker processes ----------------------------------------------------------------------------------


def engine_settings(settings_factory: Callable[..., Settings], **overrides: object) -> Settings:
    return engine_processes.engine_settings(settings_factory, **{"shutdown_grace_seconds": 0.5, **overrides})


LONG_LEAD = {"fire_lead_seconds": 4.0}  # FIRE_LEAD_SECONDS for the worker processes: time to act while armed


async def _armed_fire(job_id: str) -> datetime:
    """Wait until a worker has claimed one of the job's fires at least 1.5 s before its instant (the row
    moved on during the lead); returns that fire, still armed."""
    while True:
        fire = (await Job.get(id=job_id)).next_run_at

        async def claimed(fire: datetime | None = fire) -> bool:
            # None: not scheduled yet (the worker's start-up reconcile sets it).
            return (await Job.get(id=job_id)).next_run_at != fire

        await wait_until(claimed, timeout=20, interval=0.02)
        if fire is not None and datetime.now(UTC) < fire - timedelta(seconds=1.5):
            return fire  # otherwise too close to act while armed: the next one


@pytest.mark.slow
async def test_sigterm_while_armed_hands_the_fire_to_the_next_worker_which_runs_it_once(
    settings_factory: Callable[..., Settings], orm: Runtime, tmp_path: Path
) -> None:
    settings = engine_settings(settings_factory)
    await make_job(id="relay", schedule="@every 10s", payload={"seconds": 0})
    first = WorkerProcess(settings, tmp_path, "first", **LONG_LEAD)
    first.start()
    try:
        fire = await _armed_fire("relay")
        first.signal(signal.SIGTERM)  # grace 0.5 s: the fire's instant is further away than that
        assert first.wait(15) == 0
    finally:
        first.stop()
    assert "handed back unstarted" in first.tail(200)
    # (An earlier fire, too close to its instant for this test to act on, may have run.)
    assert await Run.filter(job_id="relay", fire_at=fire).count() == 0
    with WorkerProcess(settings, tmp_path, "second", **LONG_LEAD):

        async def ran() -> bool:
            return await Run.filter(job_id="relay", fire_at=fire, completed_at__isnull=False).exists()

        await wait_until(ran, timeout=20)
        [run] = await Run.filter(job_id="relay", fire_at=fire)
        assert run.result == "success" and run.started_at >= fire
        print(f"handed-back fire started {(run.started_at - fire).total_seconds() * 1000:.0f} ms after its instant")

        async def next_ran() -> bool:
            return await Run.filter(job_id="relay", fire_at=fire + timedelta(seconds=10)).exists()

        await wait_until(next_ran, timeout=20)
    fired = [r.fire_at for r in await Run.filter(job_id="relay", fire_at__gte=fire).order_by("fire_at")]
    assert fired[:2] == [fire, fire + timedelta(seconds=10)]
    assert len(fired) == len(set(fired))


@pytest.mark.slow
async def test_a_worker_killed_while_armed_loses_that_fire_at_most_and_the_schedule_goes_on(
    settings_factory: Callable[..., Settings], orm: Runtime, tmp_path: Path
) -> None:
    settings = engine_settings(settings_factory)
    await make_job(id="orphaned", schedule="@every 10s", payload={"seconds": 0})
    doomed = WorkerProcess(settings, tmp_path, "doomed", **LONG_LEAD)
    doomed.start()
    try:
        fire = await _armed_fire("orphaned")
    finally:
        doomed.signal(signal.SIGKILL)
        doomed.wait(5)
    with WorkerProcess(settings, tmp_path, "survivor", **LONG_LEAD):

        async def next_ran() -> bool:
            return await Run.filter(job_id="orphaned", fire_at=fire + timedelta(seconds=10), result="success").exists()

        await wait_until(next_ran, timeout=30)
    runs = await Run.filter(job_id="orphaned")
    per_fire = {r.fire_at: 0 for r in runs}
    for r in runs:
        per_fire[r.fire_at] += 1
    print(f"killed while armed: fire {fire.isoformat()} ran {per_fire.get(fire, 0)} time(s)")
    # The claimed fire died with its worker: at most once (here: not at all), never twice; the next one runs.
    assert per_fire.get(fire, 0) <= 1
    assert max(per_fire.values()) == 1
