"""Keeps exactly one pending arq fire per enabled job, and claims fires as they come due.

The database holds `next_run_at`, the fire that is enqueued. Fire ids are deterministic (job + fire
time) and every change of `next_run_at` is a compare-and-set, so any number of reconcilers and
workers agree on one fire and run it at most once.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from app import queue
from app.jobs.models import Job
from app.jobs.schedule import Schedule, catch_up, validate_schedule
from app.runtime import Runtime

log = logging.getLogger(__name__)


def schedule_of(job: Job, rt: Runtime) -> Schedule:
    return validate_schedule(job.schedule, job.timezone or rt.settings.scheduler_timezone)


def _desired_fire(job: Job, rt: Runtime, now: datetime) -> datetime:
    """The fire to keep enqueued: the current one while still due, else one missed fire within
    the grace window, else the next one."""
    grace = timedelta(seconds=rt.settings.misfire_grace_seconds)
    current = job.next_run_at
    if current is not None and current > now - grace:
        return current
    schedule = schedule_of(job, rt)
    # Catch-up only replaces a fire that was really pending; a newly enabled job starts from now.
    missed = catch_up(schedule, current, now, grace) if current is not None else None
    return missed or schedule.next_after(now)


async def reconcile_job(rt: Runtime, job: Job) -> datetime | None:
    """Bring arq in line with the job's row; returns the fire that is enqueued (None when disabled)."""
    if not job.enabled:
        if job.next_run_at is not None:
            await queue.cancel_fire(rt.redis, job_id=job.id, fire_at=job.next_run_at)
            await Job.filter(id=job.id, enabled=False, next_run_at=job.next_run_at).update(next_run_at=None)
        return None
    desired = _desired_fire(job, rt, rt.now())
    if desired != job.next_run_at:
        moved = await Job.filter(id=job.id, enabled=True, next_run_at=job.next_run_at).update(next_run_at=desired)
        if not moved:
            return None  # someone else changed the row meanwhile; they reconcile it
        job.next_run_at = desired
    await queue.enqueue_fire(rt.redis, job_id=job.id, fire_at=desired)
    return desired


async def reconcile_all(rt: Runtime) -> int:
    """The safety net, run at worker start-up and periodically: every job, enabled or not."""
    count = 0
    for job in await Job.all().order_by("id"):
        try:
            await reconcile_job(rt, job)
            count += 1
        except Exception:
            log.exception("could not reconcile job %s", job.id)
    return count


async def claim_fire(rt: Runtime, *, job_id: str, fire_at: datetime) -> Job | None:
    """Advance the job past this fire and enqueue the next; returns the job only to the one caller that wins.

    A fire that is stale (job gone, disabled, rescheduled) or already claimed returns None.
    """
    job = await Job.get_or_none(id=job_id)
    if job is None or not job.enabled or job.next_run_at != fire_at:
        return None
    following = schedule_of(job, rt).next_after(max(rt.now(), fire_at))
    won = await Job.filter(id=job_id, enabled=True, next_run_at=fire_at).update(next_run_at=following)
    if not won:
        return None
    job.next_run_at = following
    await queue.enqueue_fire(rt.redis, job_id=job_id, fire_at=following)
    return job
