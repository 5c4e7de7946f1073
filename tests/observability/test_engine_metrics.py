"""The engine's rare events, counted where they happen: a lost lease, a lost worker, a missed fire."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from prometheus_client import REGISTRY

from app.api.live import Hub
from app.engine import events, leases, runs, scheduler
from app.platform import metrics
from app.platform.runtime import Runtime
from app.platform.schedule import validate_schedule
from tests.factories import make_job
from tests.support.engine import begin_run, execute


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_a_run_whose_worker_vanished_counts_as_a_lease_loss_where_it_is_reaped(orm: Runtime) -> None:
    job = await make_job(id="vanished")
    run = await begin_run(orm, job)
    await orm.redis.delete(leases.key("vanished"))  # the worker died: nobody renews the lease
    before = sample("jobs_gateway_lease_losses_total", job_id="vanished", reason="worker_lost")
    finished = sample("jobs_gateway_runs_finished_total", job_id="vanished", result="error")
    later = Runtime(settings=orm.settings, redis=orm.redis, clock=lambda: run.started_at + timedelta(minutes=5))
    assert (await runs.reap_lost(later)).closed == 1
    assert sample("jobs_gateway_lease_losses_total", job_id="vanished", reason="worker_lost") == before + 1
    assert sample("jobs_gateway_runs_finished_total", job_id="vanished", result="error") == finished + 1
    assert (await runs.reap_lost(later)).closed == 0  # counted once, however many reapers pass
    assert sample("jobs_gateway_lease_losses_total", job_id="vanished", reason="worker_lost") == before + 1


async def test_a_handler_cancelled_for_its_lost_lease_is_counted(orm: Runtime) -> None:
    job = await make_job(id="usurped", type="test_block")
    run = await begin_run(orm, job)
    before = sample("jobs_gateway_lease_losses_total", job_id="usurped", reason="lease_lost")
    task = asyncio.create_task(execute(orm, job, run))
    await asyncio.sleep(0.1)
    await orm.redis.set(leases.key("usurped"), "someone-else")
    await asyncio.wait_for(task, 5)
    assert sample("jobs_gateway_lease_losses_total", job_id="usurped", reason="lease_lost") == before + 1
    assert sample("jobs_gateway_runs_started_total", job_id="usurped", trigger="manual") >= 1


async def test_a_fire_that_comes_due_past_the_catch_up_window_is_counted_as_skipped_with_its_reason(
    orm: Runtime,
) -> None:
    cutoff = orm.now() - timedelta(seconds=orm.settings.misfire_grace_seconds + 1)
    fire_at = validate_schedule("0 * * * *").last_at_or_before(cutoff)  # the only hourly fire that far back
    await make_job(id="overslept", schedule="0 * * * *", next_run_at=fire_at)
    labels = {"job_id": "overslept", "reason": "outside_catch_up_window"}
    before = sample("jobs_gateway_fires_skipped_total", **labels)
    assert await scheduler.claim_fire(orm, job_id="overslept", fire_at=fire_at) is None
    assert sample("jobs_gateway_fires_skipped_total", **labels) == before + 1


async def test_a_job_deleted_on_another_instance_leaves_this_instances_metrics(orm: Runtime) -> None:
    async def load(job_id: str) -> object:
        return None

    metrics.run_started("gone-elsewhere", "manual", None)
    assert sample("jobs_gateway_runs_started_total", job_id="gone-elsewhere", trigger="manual") == 1
    hub = Hub(orm.redis, load)  # nobody subscribed: the series go all the same
    hub.start()
    try:
        await asyncio.wait_for(hub.connected.wait(), 5)
        await events.publish(orm.redis, events.JOB_DELETED, "gone-elsewhere")
        for _ in range(100):
            if sample("jobs_gateway_runs_started_total", job_id="gone-elsewhere", trigger="manual") == 0:
                break
            await asyncio.sleep(0.02)
    finally:
        await hub.stop()
    assert (
        REGISTRY.get_sample_value("jobs_gateway_runs_started_total", {"job_id": "gone-elsewhere", "trigger": "manual"})
        is None
    )
