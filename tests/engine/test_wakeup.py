"""Workers sleep until there is work (app.engine.waking): real worker processes, a real redis-server.

Each test makes the fixed poll slow (WORKER_POLL_DELAY 1 s) and the idle cap long, so that only the
wake-up can explain a fast start.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil  # type: ignore[import-untyped]
import pytest
import redis as sync_redis

from app.data.jobs import Job
from app.data.runs import Run
from app.platform.config import Settings
from app.platform.runtime import Runtime
from app.runs import service as runs_service
from tests.conftest import make_settings, make_token, running_app
from tests.factories import make_job, wait_for_logs, wait_until
from tests.support.processes import WorkerProcess
from tests.support.servers import RedisServer

pytestmark = [pytest.mark.slow, pytest.mark.serial]

SLOW_POLL = {"worker_poll_delay": 1.0, "worker_idle_poll_seconds": 5.0}


def worker_settings(settings_factory: Callable[..., Settings], **overrides: object) -> Settings:
    return settings_factory(embedded_worker=False, heartbeat_seconds=1.0, lease_ttl_seconds=3.0, **overrides)


async def test_an_idle_worker_sends_few_redis_commands_and_uses_little_cpu(database_url: str, tmp_path: Path) -> None:
    # Its own Redis, so that nothing else's commands are counted; production engine settings.
    with RedisServer() as own_redis:
        settings = make_settings(
            database_url=database_url,
            redis_url=own_redis.url,
            embedded_worker=False,
            worker_poll_delay=0.05,
            worker_idle_poll_seconds=1.0,
            heartbeat_seconds=5.0,
            lease_ttl_seconds=15.0,
        )
        with WorkerProcess(settings, tmp_path) as worker:
            assert worker.proc is not None
            proc = psutil.Process(worker.proc.pid)
            client = sync_redis.Redis.from_url(own_redis.url)
            try:
                await asyncio.sleep(1.5)  # start-up reconcile and first polls
                commands0 = int(client.info("stats")["total_commands_processed"])
                cpu0, t0 = sum(proc.cpu_times()[:2]), time.monotonic()
                await asyncio.sleep(5.0)
                elapsed = time.monotonic() - t0
                cpu = 100 * (sum(proc.cpu_times()[:2]) - cpu0) / elapsed
                commands = (int(client.info("stats")["total_commands_processed"]) - commands0 - 1) / elapsed
            finally:
                client.close()
    print(f"idle worker: {commands:.1f} Redis commands/s, {cpu:.2f} % of a core")
    assert commands <= 20
    assert cpu < 5  # the target is 1 %; this machine is shared with other test runs


async def test_a_trigger_reaches_a_standalone_worker_without_waiting_for_a_poll(
    settings_factory: Callable[..., Settings], orm: Runtime, tmp_path: Path
) -> None:
    settings = worker_settings(settings_factory, **SLOW_POLL)
    rt = Runtime(settings=settings, redis=orm.redis)
    await make_job(id="quick", schedule="0 0 1 1 *", enabled=False)
    latencies: list[float] = []
    with WorkerProcess(settings, tmp_path):
        await asyncio.sleep(1.5)  # past the first polls after start-up: the worker is asleep
        for i in range(12):
            sent = time.time()
            await runs_service.trigger(rt, job_id="quick", actor="test")

            async def started(n: int = i) -> bool:
                return await Run.filter(job_id="quick", completed_at__isnull=False).count() > n

            await wait_until(started, timeout=10, interval=0.005)
            run = await Run.filter(job_id="quick").order_by("-id").first()
            assert run is not None and run.result == "success"
            latencies.append(run.started_at.timestamp() - sent)
            await asyncio.sleep(0.2)
    p50 = statistics.median(latencies)
    print(f"trigger → run started: p50 {p50 * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms")
    # A 1 s poll would put the median near 500 ms.
    assert p50 < 0.15


async def test_deferred_fires_start_on_time_while_the_worker_sleeps(
    settings_factory: Callable[..., Settings], orm: Runtime, tmp_path: Path
) -> None:
    settings = worker_settings(settings_factory, **SLOW_POLL)
    await make_job(id="tick", schedule="@every 2s")
    with WorkerProcess(settings, tmp_path):

        async def fired_twice() -> bool:
            return await Run.filter(job_id="tick", completed_at__isnull=False).count() >= 2

        await wait_until(fired_twice, timeout=15, interval=0.05)
    runs = await Run.filter(job_id="tick").order_by("id")
    lags = [(r.started_at - r.fire_at).total_seconds() for r in runs if r.fire_at is not None]
    print("fire lags (ms):", [round(lag * 1000, 1) for lag in lags])
    # The first fire may be a catch-up of one due before the worker started; the rest are on time.
    assert all(lag < 0.25 for lag in lags[1:])
    assert len(lags) >= 2


async def test_two_workers_both_sleeping_run_each_trigger_once(
    settings_factory: Callable[..., Settings], orm: Runtime, tmp_path: Path
) -> None:
    settings = worker_settings(settings_factory, **SLOW_POLL)
    rt = Runtime(settings=settings, redis=orm.redis)
    jobs = [await make_job(id=f"j{i}", schedule="0 0 1 1 *", enabled=False) for i in range(10)]
    with WorkerProcess(settings, tmp_path, "w1"), WorkerProcess(settings, tmp_path, "w2"):
        await asyncio.sleep(1.5)
        sent = time.time()
        for job in jobs:
            await runs_service.trigger(rt, job_id=job.id, actor="test")

        async def all_done() -> bool:
            return await Run.filter(completed_at__isnull=False).count() >= len(jobs)

        await wait_until(all_done, timeout=10, interval=0.01)
        await asyncio.sleep(0.5)  # a duplicate would show up by now
    runs = await Run.all()
    assert sorted(r.job_id for r in runs) == sorted(j.id for j in jobs)
    assert all(r.result == "success" for r in runs)
    last_start = max(r.started_at.timestamp() for r in runs) - sent
    print(f"10 triggers on 2 sleeping workers: all started within {last_start * 1000:.0f} ms")
    assert last_start < 0.8


async def test_the_embedded_worker_is_woken_too(settings_factory: Callable[..., Settings], tmp_path: Path) -> None:
    settings = settings_factory(**SLOW_POLL)
    client: httpx.AsyncClient
    async with running_app(settings) as (_, client):
        headers = {"Authorization": f"Bearer {make_token(settings)}"}
        await Job.create(id="emb", name="Embedded", description="", type="test_sleep", payload={}, schedule="0 0 1 1 *")
        await asyncio.sleep(1.5)
        sent = time.time()
        assert (await client.post("/api/jobs/emb/trigger", headers=headers)).status_code == 200
        await wait_for_logs(client, "emb", headers)
        run = await Run.get(job_id="emb")
        latency = run.started_at.timestamp() - sent
    print(f"embedded worker: trigger → run started {latency * 1000:.1f} ms")
    assert latency < 0.3


async def test_a_backlog_beyond_one_poll_and_every_slot_is_drained(
    settings_factory: Callable[..., Settings], orm: Runtime, tmp_path: Path
) -> None:
    # More runs than one poll reads (arq's queue_read_limit, 100) and than the worker has slots (10): the
    # worker must keep polling as slots free up, without waiting for its idle cap and without spinning.
    settings = worker_settings(settings_factory, **SLOW_POLL)
    rt = Runtime(settings=settings, redis=orm.redis)
    jobs = [await make_job(id=f"b{i:03d}", schedule="0 0 1 1 *", enabled=False) for i in range(150)]
    for job in jobs:
        await runs_service.trigger(rt, job_id=job.id, actor="test")
    sent = time.time()
    with WorkerProcess(settings, tmp_path):

        async def all_done() -> bool:
            return await Run.filter(completed_at__isnull=False).count() >= len(jobs)

        await wait_until(all_done, timeout=60, interval=0.05)
    took = max(r.completed_at.timestamp() for r in await Run.all() if r.completed_at) - sent
    print(f"150 queued runs drained {took:.1f} s after they were queued (worker start-up included)")
    assert await Run.filter(result="success").count() == len(jobs)
