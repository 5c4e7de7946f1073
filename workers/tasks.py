"""The arq functions. They receive ids, never ORM objects, and leave every rule to the service layer."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any

from app.data.jobs import Job
from app.jobs import scheduler
from app.platform.runtime import Runtime
from app.runs import lease
from app.runs import service as runs_service
from workers import fires
from workers.runner import execute

log = logging.getLogger(__name__)
SKIPPED_FIRES_KEY = fires.SKIPPED_FIRES_KEY


async def run_job(ctx: dict[str, Any], job_id: str, token: str, triggered_by: str) -> None:
    """A manual run queued through arq (`queue.lease_and_enqueue_run`), which took its lease. Triggers from
    the API no longer come this way (workers.dispatch runs them); this stays for runs queued so."""
    rt: Runtime = ctx["runtime"]
    # Compare-and-extend is the check: a lease that lapsed while queued may already be someone else's.
    # The job is read meanwhile (Redis and the database answer in parallel): a trigger waits on both.
    renewed, job = await asyncio.gather(
        lease.renew(rt.redis, job_id, token, rt.settings.lease_ttl_seconds), Job.get_or_none(id=job_id)
    )
    if not renewed:
        await runs_service.record_dropped(rt, job_id=job_id, token=token, triggered_by=triggered_by)
        return
    run = None
    if job is not None:
        run = await runs_service.begin(
            rt, job=job, token=token, triggered_by=triggered_by, fire_at=None, attempt=ctx.get("job_try", 1)
        )
    if job is None or run is None:
        # Deleted meanwhile, or a redelivery of a run that already began: never execute twice.
        await lease.release(rt.redis, job_id, token)
        return
    await execute(rt, job, run)


async def fire_job(ctx: dict[str, Any], job_id: str, fire_at_iso: str) -> None:
    """A scheduled fire, taken FIRE_LEAD_SECONDS ahead: claim it (at most once), which schedules the next
    one, then start it on its instant with the others due then (workers.fires), unless still running."""
    rt: Runtime = ctx["runtime"]
    fire_at = datetime.fromisoformat(fire_at_iso)
    job = await scheduler.claim_fire(rt, job_id=job_id, fire_at=fire_at)
    if job is None:
        return
    run = await fires.starter().start(rt, job, fire_at, ctx.get("job_try", 1))
    if run is not None:
        await execute(rt, job, run)
