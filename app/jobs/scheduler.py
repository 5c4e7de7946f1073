"""Keeps exactly one pending arq fire per enabled job, and claims fires as they come due.

The database holds `next_run_at`, the fire that is enqueued. Fire ids are deterministic (job + fire
time) and every change of `next_run_at` is a compare-and-set, so any number of reconcilers and
workers agree on one fire and run it at most once.
"""

from __future__ import annotations

import functools
import logging
from datetime import datetime, timedelta

from tortoise import connections
from tortoise.transactions import in_transaction

from app import queue
from app.jobs.models import Job
from app.jobs.schedule import Schedule, catch_up, validate_schedule
from app.observability import metrics
from app.runtime import Runtime

log = logging.getLogger(__name__)


def schedule_of(job: Job, rt: Runtime) -> Schedule:
    return _parsed(job.schedule, job.timezone or rt.settings.scheduler_timezone)


@functools.lru_cache(maxsize=4096)
def _parsed(expression: str, tz: str) -> Schedule:
    # Parsing a cron expression costs about as much as everything else a reconcile does for a job, and
    # thousands of jobs share a handful of expressions. A Schedule is immutable.
    return validate_schedule(expression, tz)


def _replacement(schedule: Schedule, current: datetime, now: datetime, grace: timedelta) -> datetime:
    """For a fire that can no longer run on time: the latest fire missed within the grace window
    (run once, however many were missed), else the next one. Never a burst of catch-up runs."""
    return catch_up(schedule, current - timedelta(microseconds=1), now, grace) or schedule.next_after(now)


async def _desired_fire(job: Job, rt: Runtime, now: datetime) -> datetime:
    """The fire to keep enqueued for an enabled job."""
    current: datetime | None = job.next_run_at
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
    """The safety net, run at worker start-up and periodically: every job, enabled or not.

    Enabled jobs go in batches, each costing two Redis round trips and one transaction rather than a few
    of each per job: with 10,000 jobs this runs at every start-up and every RECONCILE_INTERVAL_SECONDS."""
    count = 0
    jobs = await Job.all().order_by("id")
    for job in jobs:
        if not job.enabled:
            try:
                await reconcile_job(rt, job)
                count += 1
            except Exception:
                log.exception("could not reconcile job %s", job.id)
    enabled = [j for j in jobs if j.enabled]
    for start in range(0, len(enabled), RECONCILE_BATCH):
        batch = enabled[start : start + RECONCILE_BATCH]
        try:
            count += await _reconcile_enabled(rt, batch)
        except Exception:
            # One bad batch (a lock timeout, Redis hiccup) must not stop the rest: the next pass retries it.
            log.exception("could not reconcile jobs %s to %s", batch[0].id, batch[-1].id)
    return count


RECONCILE_BATCH = 500


async def _reconcile_enabled(rt: Runtime, jobs: list[Job]) -> int:
    """reconcile_job for a batch of enabled jobs, with the same outcome."""
    now = rt.now()
    grace = timedelta(seconds=rt.settings.misfire_grace_seconds)
    due = [j for j in jobs if j.next_run_at is not None and j.next_run_at <= now]
    pending = await queue.fires_pending(rt.redis, [(j.id, j.next_run_at) for j in due if j.next_run_at])
    held = {j.id for j, p in zip(due, pending, strict=True) if p}
    wanted: list[tuple[Job, datetime]] = []
    upcoming: dict[Schedule, datetime] = {}  # jobs sharing a schedule share its next fire after `now`
    for job in jobs:
        try:
            current = job.next_run_at
            if current is None:
                schedule = schedule_of(job, rt)
                if schedule not in upcoming:
                    upcoming[schedule] = schedule.next_after(now)
                wanted.append((job, upcoming[schedule]))
            elif current > now or job.id in held:
                wanted.append((job, current))
            else:
                wanted.append((job, _replacement(schedule_of(job, rt), current, now, grace)))
        except Exception:
            log.exception("could not reconcile job %s", job.id)
    moves = [(job, fire) for job, fire in wanted if fire != job.next_run_at]
    lost = await _move_many(moves) if moves else set()
    await queue.enqueue_fires(rt.redis, [(job.id, fire) for job, fire in wanted if job.id not in lost])
    return len(wanted)


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
    if late:
        following = _replacement(schedule, fire_at, now, grace)
    else:
        # Claimed late (a busy pool) with the next fire already due: that one still runs, at once, as after
        # downtime (the latest due one only: never a burst); otherwise the next fire after now.
        following = catch_up(schedule, fire_at, now, grace) or schedule.next_after(max(now, fire_at))
    if not await _move(job, following):
        return None
    await queue.enqueue_fire(rt.redis, job_id=job_id, fire_at=following)
    if late:
        log.info("fire %s of %s skipped: %s late, past the grace window", fire_at, job_id, now - fire_at)
        metrics.fire_missed(job_id)
        return None
    return job


async def _move_many(moves: list[tuple[Job, datetime]]) -> set[str]:
    """_move for many jobs: two statements in one transaction instead of one per job. Returns the ids
    whose row someone else changed meanwhile (they reconcile those)."""
    postgres = connections.get("default").capabilities.dialect == "postgres"

    def mark(i: int) -> str:
        return f"${i}" if postgres else "?"

    fresh = [[fire, job.id] for job, fire in moves if job.next_run_at is None]
    moved = [[fire, job.id, job.next_run_at] for job, fire in moves if job.next_run_at is not None]
    sql = f"UPDATE job SET next_run_at = {mark(1)} WHERE id = {mark(2)} AND enabled AND next_run_at"
    async with in_transaction() as tx:
        if fresh:
            await tx.execute_many(f"{sql} IS NULL", fresh)
        if moved:
            await tx.execute_many(f"{sql} = {mark(3)}", moved)
    # executemany reports no per-row counts: the rows that now hold the wanted fire are the ones that moved.
    held = dict(await Job.filter(id__in=[job.id for job, _ in moves]).values_list("id", "next_run_at"))
    lost = {job.id for job, fire in moves if held.get(job.id) != fire}
    for job, fire in moves:
        if job.id not in lost:
            job.next_run_at = fire
    return lost
