"""Auto-pause as the engine does it: the failure count, the job disabled with its activity entry, the event and the
metric; a success or an enable resets the count; a cancelled run does not count."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from prometheus_client import REGISTRY

from app.data.activity import Activity
from app.data.jobs import Job
from app.engine import events
from app.engine import runs as runs_engine
from app.jobs import service as jobs_service
from app.platform.runtime import Runtime
from tests.factories import make_job
from tests.support.engine import begin_run


def paused_total(job_id: str) -> float:
    return REGISTRY.get_sample_value("jobs_gateway_jobs_auto_paused_total", {"job_id": job_id}) or 0.0


async def run_once(rt: Runtime, job: Job, result: str, details: str = "boom", **kwargs: Any) -> None:
    run = await begin_run(rt, job)
    assert await runs_engine.complete(rt, run=run, result=result, details=details, **kwargs)


async def test_failures_in_a_row_pause_the_job_with_activity_event_and_metric(orm: Runtime) -> None:
    job = await make_job(id="fragile", schedule="@every 1h", pause_after_failures=3)
    pubsub = orm.redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(events.CHANNEL)
    before = paused_total("fragile")
    try:
        await run_once(orm, job, "error")
        await run_once(orm, job, "success", "fine")  # a success resets the count
        await run_once(orm, job, "error")
        await run_once(orm, job, "error", "cancelled by user:1", final=True)  # a cancel does not count
        await run_once(orm, job, "error")
        assert (await Job.get(id="fragile")).consecutive_failures == 2
        assert (await Job.get(id="fragile")).enabled
        await run_once(orm, job, "error")
        seen: list[dict[str, Any]] = []
        deadline = asyncio.get_running_loop().time() + 5
        while not any(e["event"] == "job.disabled" for e in seen) and asyncio.get_running_loop().time() < deadline:
            message = await pubsub.get_message(timeout=0.2)
            if message is not None:
                seen.append(json.loads(message["data"]))
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
    paused = await Job.get(id="fragile")
    assert (paused.enabled, paused.consecutive_failures, paused.next_run_at) == (False, 3, None)
    [entry] = await Activity.filter(event="jobs.auto_pause")
    assert (entry.actor, entry.details["consecutiveFailures"], entry.details["pauseAfterFailures"]) == ("system", 3, 3)
    [disabled] = [e for e in seen if e["event"] == "job.disabled"]
    assert (disabled["jobId"], disabled["enabled"], disabled["reason"]) == ("fragile", False, "auto_pause")
    assert paused_total("fragile") == before + 1
    state = await jobs_service.start(orm, job_id="fragile", actor="user:1")
    assert (state.job.enabled, state.job.consecutive_failures) == (True, 0)
