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


def _replacement(schedule: Schedule, current: datetime, now: datetime, grace: timedelta) -> datetime:
    """For a fire that can no longer run on time: the latest fire missed within the grace window
    (run once, however many were missed), else the next one. Never a burst of catch-up runs."""
    return catch_up(schedule, current - timedelta(microseconds=1), now, grace) or schedule.next_after(now)


async def _desired_fire(job: Job, rt: Runtime, now: datetime) -> datetime:
    """The fire to keep enqueued for an enabled job."""
    current = job.next_run_at
    schedule = schedule_of(job, rt)
    if current is None:
        # Newly enabled: start from now, no catch-up for a time the job was not scheduled.
        return schedule.next_after(now)
    if current > now or await queue.fire_pending(rt.redis, job_id=job.id, fire_at=current):
        return current
    # Due, yet arq no longer holds it: Redis lost it while no worker ran.
    return _replacement(schedule, current, now, timedelta(seconds=rt.settings.misfire_grace_seconds))


async def reconcile_job(rt: Runtime, job: Job) -> datetime | None:
    """Bring arq in line with the job's row; returns the fire that is enqueued (None when disabled)."""
    if not job.enabled:
        if job.next_run_at is not None:
            await queue.cancel_fire(rt.redis, job_id=job.id, fire_at=job.next_run_at)
            await Job.filter(id=job.id, enabled=False, next_run_at=job.next_run_at).update(next_run_at=None)
        return None
    desired = await _desired_fire(job, rt, rt.now())
    if desired != job.next_run_at and not await _move(job, desired):
        return None  # someone else changed the row meanwhile; they reconcile it
    await queue.enqueue_fire(rt.redis, job_id=job.id, fire_at=desired)
    return desired


async def _move(job: Job, fire: datetime) -> bool:
    moved = await Job.filter(id=job.id, enabled=True, next_run_at=job.next_run_at).update(next_run_at=fire)
    if moved:
        job.next_run_at = fire
    return bool(moved)


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

    A fire that is stale (job gone, disabled, rescheduled) or already claimed returns None. So does a
    fire that comes due later than the grace window (every worker was down): the latest missed fire
    within the window is enqueued in its place, to run once.
    """
    job = await Job.get_or_none(id=job_id)
    if job is None or not job.enabled or job.next_run_at != fire_at:
        return None
    now = rt.now()
    schedule = schedule_of(job, rt)
    grace = timedelta(seconds=rt.settings.misfire_grace_seconds)
    late = now - fire_at > grace
    following = _replacement(schedule, fire_at, now, grace) if late else schedule.next_after(max(now, fire_at))
    if not await _move(job, following):
        return None
    await queue.enqueue_fire(rt.redis, job_id=job_id, fire_at=following)
    if late:
        log.info("fire %s of %s skipped: %s late, past the grace window", fire_at, job_id, now - fire_at)
        return None
    return job
