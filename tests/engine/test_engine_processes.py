"""The engine with real `jobs-gateway worker` processes sharing Redis and one database."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from itertools import pairwise
from pathlib import Path

import pytest

from app.data.jobs import Job
from app.data.runs import Run
from app.engine import scheduler
from app.platform.aio import cancel_and_wait
from app.platform.config import Settings
from app.platform.runtime import Runtime
from app.runs import service as runs_service
from tests.factories import make_job, wait_until
from tests.support.engine import skipped_fires
from tests.support.processes import WorkerProcess

pytestmark = [pytest.mark.slow, pytest.mark.serial]


def engine_settings(settings_factory: Callable[..., Settings], **overrides: object) -> Settings:
    base: dict[str, object] = {
        "embedded_worker": False,
        "heartbeat_seconds": 1.0,
        "lease_ttl_seconds": 3.0,
        "reconcile_interval_seconds": 0.5,
        "worker_poll_delay": 0.02,
    }
    base.update(overrides)
    return settings_factory(**base)


async def test_every_second_with_two_workers_and_two_reconcilers_fires_once_per_second(
    settings_factory: Callable[..., Settings], orm: Runtime, tmp_path: Path
) -> None:
    settings = engine_settings(settings_factory)
    rt = Runtime(settings=settings, redis=orm.redis)
    await make_job(id="tick", schedule="@every 1s", payload={"seconds": 0.01})
    with WorkerProcess(settings, tmp_path, "w1"), WorkerProcess(settings, tmp_path, "w2"):

        async def reconciler() -> None:
            # Two API-side reconcilers hammering the same schedule as the workers' own.
            while True:
                await scheduler.reconcile_all(rt)
                await asyncio.sleep(0.1)

        loops = [asyncio.create_task(reconciler()) for _ in range(2)]
        first = await _first_fire(rt)
        await asyncio.sleep(10.2)
        # Not one cancel(): a client library may swallow it and the loop would run on (app.platform.aio). A cancel
        # that landed as a transaction began also used to keep SQLite's connection lock
        # (app/adapters/tortoise/sqlite.py).
        await cancel_and_wait(*loops)
        assert all(loop.done() for loop in loops), "a reconciler loop ignored cancellation"
    runs = await Run.filter(job_id="tick").order_by("fire_at")
    fires = [r.fire_at for r in runs]
    assert len(fires) == len(set(fires)), "a fire ran twice"
    assert first is not None
    window = [f for f in fires if f is not None and first <= f < first + timedelta(seconds=10)]
    print(f"fires in the 10 s after the first: {len(window)}, runs in all: {len(runs)}")
    assert len(window) == 10
    lags = sorted((r.started_at - r.fire_at).total_seconds() for r in runs if r.fire_at)
    print(f"start lag p50 {lags[len(lags) // 2] * 1000:.0f} ms, max {lags[-1] * 1000:.0f} ms")
    assert all(r.result == "success" for r in runs)


async def _first_fire(rt: Runtime) -> datetime | None:
    async def fired() -> bool:
        return await Run.filter(job_id="tick").exists()

    await wait_until(fired, timeout=15)
    first = await Run.filter(job_id="tick").order_by("id").first()
    assert first is not None
    return first.fire_at


@pytest.mark.postgres
async def test_500_fires_of_fast_jobs_across_four_workers_run_exactly_500_times(
    settings_factory: Callable[..., Settings], orm: Runtime, tmp_path: Path
) -> None:
    settings = engine_settings(settings_factory, reconcile_interval_seconds=0.2)
    jobs = [f"fast-{i:02d}" for i in range(50)]
    for job_id in jobs:
        await make_job(id=job_id, schedule="@every 1s", payload={"seconds": 0})
    workers = [WorkerProcess(settings, tmp_path, f"w{i}") for i in range(4)]
    for worker in workers:
        worker.start()
    try:

        async def enough() -> bool:
            return await Run.filter(completed_at__isnull=False).count() >= 500

        await wait_until(enough, timeout=40, interval=0.2)
        # Stop the schedule (pending fires are then dropped at claim), let in-flight runs settle.
        await Job.all().update(enabled=False, next_run_at=None)
        await asyncio.sleep(1.5)
    finally:
        for worker in workers:
            worker.stop()
    runs = await Run.all()
    per_fire = Counter((r.job_id, r.fire_at) for r in runs)
    print(f"runs: {len(runs)}, distinct fires: {len(per_fire)}")
    assert len(runs) >= 500
    assert max(per_fire.values()) == 1, "a fire ran more than once"
    assert {r.result for r in runs} == {"success"}
    # None missed either: each job's fires are consecutive seconds, and no fire was skipped.
    for job_id in jobs:
        fires = sorted(r.fire_at for r in runs if r.job_id == job_id and r.fire_at is not None)
        gaps = {(b - a).total_seconds() for a, b in pairwise(fires)}
        assert gaps <= {1.0}, f"{job_id} missed a fire: gaps {sorted(gaps)}"
    # Nothing was skipped but the fires already on their way when the jobs were stopped.
    assert set(await skipped_fires()) <= {"disabled"}


async def test_sigkill_mid_run_is_recorded_as_worker_lost_and_the_next_fire_happens(
    settings_factory: Callable[..., Settings], orm: Runtime, tmp_path: Path
) -> None:
    settings = engine_settings(settings_factory)
    rt = Runtime(settings=settings, redis=orm.redis)
    await make_job(id="victim", type="test_sleep", schedule="@every 5s", payload={"seconds": 3.5})
    doomed = WorkerProcess(settings, tmp_path, "doomed")
    doomed.start()
    try:

        async def started() -> bool:
            return await Run.filter(job_id="victim", completed_at__isnull=True).exists()

        await wait_until(started, timeout=15)
    finally:
        doomed.signal(signal.SIGKILL)
        doomed.wait(5)
    killed_at = asyncio.get_running_loop().time()
    lost_run = await Run.get(job_id="victim", completed_at__isnull=True)
    with WorkerProcess(settings, tmp_path, "survivor"):
        ready_at = asyncio.get_running_loop().time()

        async def reaped() -> bool:
            await lost_run.refresh_from_db()
            return lost_run.completed_at is not None

        await wait_until(reaped, timeout=25)
        took = asyncio.get_running_loop().time() - killed_at
        after_ready = asyncio.get_running_loop().time() - ready_at
        print(f"worker lost recorded {took:.1f} s after SIGKILL, {after_ready:.1f} s after the survivor was up")
        assert (lost_run.result, lost_run.details) == ("error", "worker lost")
        # The lease lapses at most LEASE_TTL after the kill; the survivor's reaper runs every heartbeat.
        assert took <= settings.lease_ttl_seconds + settings.heartbeat_seconds + (ready_at - killed_at) + 0.5
        assert (await _state(rt, "victim")) is False

        async def next_fire_ran() -> bool:
            return await Run.filter(job_id="victim", id__gt=lost_run.id, result="success").exists()

        await wait_until(next_fire_ran, timeout=20)
    # The lost run was never executed again: no other run of that fire, and arq holds nothing of it.
    assert await Run.filter(job_id="victim", fire_at=lost_run.fire_at).count() == 1
    assert lost_run.fire_at is not None
    assert await orm.redis.zscore("arq:queue", scheduler.fire_id(lost_run.job_id, lost_run.fire_at)) is None


async def _state(rt: Runtime, job_id: str) -> bool:
    from app.jobs import service as jobs_service

    return (await jobs_service.get(rt, job_id=job_id)).running


async def test_long_run_on_a_healthy_worker_is_never_marked_lost(
    settings_factory: Callable[..., Settings], orm: Runtime, tmp_path: Path
) -> None:
    settings = engine_settings(settings_factory, heartbeat_seconds=0.5, lease_ttl_seconds=1.5)
    rt = Runtime(settings=settings, redis=orm.redis)
    await make_job(id="marathon", schedule="0 0 1 1 *", payload={"seconds": 7.5, "summary": "done"})  # 5x the lease
    with WorkerProcess(settings, tmp_path, "w1"), WorkerProcess(settings, tmp_path, "w2"):
        await runs_service.trigger(rt, job_id="marathon", actor="user:1")

        async def finished() -> bool:
            return await Run.filter(job_id="marathon", completed_at__isnull=False).exists()

        await wait_until(finished, timeout=20)
    [run] = await Run.filter(job_id="marathon")
    assert (run.result, run.details) == ("success", "done")


async def test_sigterm_lets_a_short_run_finish(
    settings_factory: Callable[..., Settings], orm: Runtime, tmp_path: Path
) -> None:
    settings = engine_settings(settings_factory, shutdown_grace_seconds=5)
    rt = Runtime(settings=settings, redis=orm.redis)
    await make_job(id="graceful", schedule="0 0 1 1 *", payload={"seconds": 1.0, "summary": "finished"})
    worker = WorkerProcess(settings, tmp_path, "w")
    worker.start()
    await runs_service.trigger(rt, job_id="graceful", actor="user:1")

    async def started() -> bool:
        return await Run.filter(job_id="graceful").exists()

    await wait_until(started, timeout=10)
    worker.signal(signal.SIGTERM)
    assert worker.wait(15) == 0
    [run] = await Run.filter(job_id="graceful")
    assert (run.result, run.details) == ("success", "finished")
    assert (await _state(rt, "graceful")) is False


async def test_sigterm_records_a_run_that_cannot_finish_as_worker_shut_down(
    settings_factory: Callable[..., Settings], orm: Runtime, tmp_path: Path
) -> None:
    settings = engine_settings(settings_factory, shutdown_grace_seconds=0.5)
    rt = Runtime(settings=settings, redis=orm.redis)
    await make_job(id="endless", type="test_block", schedule="0 0 1 1 *")
    worker = WorkerProcess(settings, tmp_path, "w")
    worker.start()
    await runs_service.trigger(rt, job_id="endless", actor="user:1")

    async def started() -> bool:
        return await Run.filter(job_id="endless").exists()

    await wait_until(started, timeout=10)
    worker.signal(signal.SIGTERM)
    worker.wait(15)
    [run] = await Run.filter(job_id="endless")
    assert (run.result, run.details) == ("error", "worker shut down")
    assert (await _state(rt, "endless")) is False
