"""Runs started and executed as the engine starts and executes them, for tests that drive the engine in-process."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from app.data.jobs import Job
from app.data.runs import Run
from app.data.skipped_fires import SkippedFire
from app.engine import consumer, context, runner, runs, starts, triggers
from app.engine.fires import spec_of
from app.job_types import registry
from app.platform.runtime import Runtime


async def begin_run(rt: Runtime, job: Job, *, triggered_by: str = "user:1", fire_at: datetime | None = None) -> Run:
    """A run of `job` started through the one start path (its lease acquired, its record written, announced)."""
    began = await starts.begin(rt, [starts.Start(spec_of(job), runs.new_token(), triggered_by, fire_at=fire_at)])
    await began.announced
    run = began.runs[0]
    assert run is not None, f"{job.id} did not start (its lease is held, or the fire already ran)"
    return run


async def execute(rt: Runtime, job: Job, run: Run) -> None:
    """The runner on a run that `begin_run` started, with the registry's handlers."""
    await runner.execute(rt, registry.run, spec_of(job), run)


def worker_ctx(rt: Runtime, *, job_try: int = 1) -> dict[str, Any]:
    """The `ctx` arq hands a standalone worker's functions (`fire_job`)."""
    return {context.KEY: context.WorkerContext(rt=rt, run_handler=registry.run, embedded=False), "job_try": job_try}


async def run_next_trigger(rt: Runtime) -> triggers.Message:
    """Pop the oldest queued trigger and run it to its end, as a worker's consumer would."""
    raw = await triggers.pop(rt.redis, 1)
    assert raw is not None, "no trigger is queued"
    message = triggers.Message.decode(raw)
    await consumer.run_trigger(rt, registry.run, raw, message)
    return message


async def insert_fire_runs(rt: Runtime, fires: list[tuple[Job, str, datetime]]) -> list[Run | None]:
    """Run records for (job, token, fire time), written as a batch of fires writes them, without leases."""
    return await runs.insert(
        [runs.NewRun(job.id, token, runs.SCHEDULER, fire_at) for job, token, fire_at in fires], rt.now()
    )


async def skipped_fires(job_id: str | None = None) -> dict[str, int]:
    """How many scheduled fires were skipped, per reason, for one job (None: every job)."""
    query = SkippedFire.all() if job_id is None else SkippedFire.filter(job_id=job_id)
    counts: dict[str, int] = {}
    for reason, count in await query.values_list("reason", "count"):
        counts[str(reason)] = counts.get(str(reason), 0) + int(count)
    return counts
