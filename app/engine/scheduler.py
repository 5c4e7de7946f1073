"""Keeps exactly one pending arq fire per enabled job, and claims fires as they come due.

The database holds `next_run_at`, the fire that is enqueued. Fire ids are deterministic (job + fire
time) and every change of `next_run_at` is a compare-and-set, so any number of reconcilers and
workers agree on one fire and run it at most once.

Each fire is one arq job (`fire_job`, app.engine.fires), enqueued `arm_lead` seconds before its instant under
the id `fire:<job>:<epoch ms>`, in one Lua call that also wakes the workers (app.adapters.arq).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from redis.exceptions import RedisError
from tortoise import connections
from tortoise.transactions import in_transaction

from app.adapters import arq as arq_protocol
from app.data.jobs import Job
from app.engine.groupcommit import GroupCommit, per_loop
from app.engine.waking import wake_channel, wake_workers
from app.platform import metrics
from app.platform.runtime import Runtime
from app.platform.schedule import MIN_INTERVAL, Schedule, catch_up, validate_schedule

log = logging.getLogger(__name__)

FIRE_FUNCTION = "fire_job"
FIRE_EXPIRY = timedelta(days=1)


def fire_id(job_id: str, fire_at: datetime) -> str:
    """Deterministic per (job, fire time): every reconciler enqueues the same id, arq keeps one."""
    return f"fire:{job_id}:{int(fire_at.timestamp() * 1000)}"


async def enqueue_fires(rt: Runtime, fires: Sequence[tuple[str, datetime, float]]) -> list[bool]:
    """Enqueue each (job id, fire time, lead) deferred to `lead` seconds before its time, in one round trip, and
    wake the workers once with the earliest due time (a lone fire: in the same call); False for a fire arq
    already holds."""
    if not fires:
        return []
    now_ms = int(time.time() * 1000)
    deferred = []
    for job_id, fire_at, lead in fires:
        # Armed `lead` seconds ahead: the worker that takes it claims it meanwhile and starts it on the instant.
        score = int(fire_at.timestamp() * 1000) - int(lead * 1000)
        # arq's default expiry is "defer time + 1 day" measured from now, which goes negative (and Redis rejects
        # it) for a catch-up fire more than a day old; count the day from whichever is later.
        expires_ms = max(score - now_ms, 0) + int(FIRE_EXPIRY.total_seconds() * 1000)
        args = (job_id, fire_at.isoformat())
        deferred.append(arq_protocol.Deferred(fire_id(job_id, fire_at), FIRE_FUNCTION, args, score, expires_ms))
    channel = wake_channel(rt.redis.default_queue_name)
    lone = len(fires) == 1
    added = await arq_protocol.enqueue_unless_present(rt.redis, deferred, announce_on=channel if lone else None)
    due = [d.score_ms for d, ok in zip(deferred, added, strict=True) if ok]
    if due and not lone:
        await wake_workers(rt.redis, min(due))
    return added


async def fires_pending(rt: Runtime, fires: Sequence[tuple[str, datetime]]) -> list[bool]:
    """Whether arq still holds each (job id, fire time) (queued or running), in one round trip."""
    return await arq_protocol.exist(rt.redis, [fire_id(job_id, fire_at) for job_id, fire_at in fires])


async def cancel_fire(rt: Runtime, *, job_id: str, fire_at: datetime) -> None:
    """Drop a fire that has not started. A fire that slips through still checks the job before it runs."""
    await arq_protocol.forget(rt.redis, rt.redis.default_queue_name, fire_id(job_id, fire_at))


def schedule_of(job: Job, rt: Runtime) -> Schedule:
    return _parsed(job.schedule, job.timezone or rt.settings.scheduler_timezone)


@functools.lru_cache(maxsize=4096)
def _parsed(expression: str, tz: str) -> Schedule:
    # Parsing a cron expression costs about as much as everything else a reconcile does for a job, and
    # thousands of jobs share a handful of expressions. A Schedule is immutable.
    return validate_schedule(expression, tz)


# The shortest time between two fires of a cron schedule (an `@every` one says its own).
CRON_MIN_GAP = timedelta(minutes=1)


def arm_lead(rt: Runtime, schedule: Schedule) -> float:
    """How long before its instant a fire is enqueued: FIRE_LEAD_SECONDS, at most half the schedule's interval.

    A fire is enqueued by the claim of the one before, which happens during that one's lead; armed less
    than an interval ahead, each fire is armed after the previous instant, so claims never run ahead of
    the schedule (a lead of a whole interval would arm, claim and re-arm the chain without end)."""
    lead = rt.settings.fire_lead_seconds
    if lead * 2 <= MIN_INTERVAL.total_seconds():
        return lead  # no schedule is shorter
    gap = schedule.every if schedule.every is not None else CRON_MIN_GAP
    return min(lead, gap.total_seconds() / 2)


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
    if current > now or (await fires_pending(rt, [(job.id, current)]))[0]:
        return current
    # Due, yet arq no longer holds it: Redis lost it while no worker ran.
    return _replacement(schedule, current, now, timedelta(seconds=rt.settings.misfire_grace_seconds))


async def reconcile_job(rt: Runtime, job: Job) -> datetime | None:
    """Bring arq in line with the job's row; returns the fire that is enqueued (None when disabled)."""
    if not job.enabled:
        if job.next_run_at is not None:
            await cancel_fire(rt, job_id=job.id, fire_at=job.next_run_at)
            await Job.filter(id=job.id, enabled=False, next_run_at=job.next_run_at).update(next_run_at=None)
        return None
    desired = await _desired_fire(job, rt, rt.now())
    if desired != job.next_run_at and not await _move(job, desired):
        return None  # someone else changed the row meanwhile; they reconcile it
    await enqueue_fires(rt, [(job.id, desired, arm_lead(rt, schedule_of(job, rt)))])
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
    pending = await fires_pending(rt, [(j.id, j.next_run_at) for j in due if j.next_run_at])
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
    fires = [(job.id, fire, arm_lead(rt, schedule_of(job, rt))) for job, fire in wanted if job.id not in lost]
    await enqueue_fires(rt, fires)
    return len(wanted)


async def claim_fire(rt: Runtime, *, job_id: str, fire_at: datetime) -> Job | None:
    """Advance the job past this fire and enqueue the next; returns the job only to the one caller that wins.

    A fire that is stale (job gone, disabled, rescheduled) or already claimed returns None. So does a
    fire that comes due later than the grace window (every worker was down): the latest missed fire
    within the window is enqueued in its place, to run once.

    Claims made at the same moment (the fires of a burst, taken ahead together) share one read, one
    transaction and one enqueue pipeline (app.engine.groupcommit); each stays its own compare-and-set.
    """
    return await _claims().submit(_Claim(rt, job_id, fire_at, rt.now()))


@dataclass(frozen=True, slots=True)
class _Claim:
    rt: Runtime
    job_id: str
    fire_at: datetime
    now: datetime


async def _claim_many(claims: list[_Claim]) -> list[Job | None]:
    jobs = {job.id: job for job in await Job.filter(id__in={c.job_id for c in claims})}
    # (index, claim, job, following, late); a job claimed twice in one batch: the first claim only.
    moves: dict[str, tuple[int, _Claim, Job, datetime, bool]] = {}
    for i, c in enumerate(claims):
        job = jobs.get(c.job_id)
        if job is None or not job.enabled or job.next_run_at != c.fire_at or job.id in moves:
            continue
        schedule = schedule_of(job, c.rt)
        grace = timedelta(seconds=c.rt.settings.misfire_grace_seconds)
        late = c.now - c.fire_at > grace
        if late:
            following = _replacement(schedule, c.fire_at, c.now, grace)
        else:
            # Claimed late (a busy pool) with the next fire already due: that one still runs, at once, as
            # after downtime (the latest due one only: never a burst); otherwise the next fire after now.
            following = catch_up(schedule, c.fire_at, c.now, grace) or schedule.next_after(max(c.now, c.fire_at))
        moves[job.id] = (i, c, job, following, late)
    won: list[tuple[int, _Claim, Job, datetime, bool]] = []
    if moves:
        sql = _CLAIM_SQL[connections.get("default").capabilities.dialect == "postgres"]
        async with in_transaction() as conn:
            # In id order, as every batch that moves job rows: concurrent batches never deadlock on PostgreSQL.
            # Plain SQL: building the same UPDATE through the ORM cost more CPU than the rest of a claim.
            for job_id in sorted(moves):
                i, c, job, following, late = moves[job_id]
                moved, _ = await conn.execute_query(sql, [following, job.id, job.next_run_at])
                if moved:
                    won.append(moves[job_id])
    results: list[Job | None] = [None] * len(claims)
    if not won:
        return results
    for i, c, job, following, late in won:
        job.next_run_at = following
        if late:
            log.info("fire %s of %s skipped: %s late, past the grace window", c.fire_at, c.job_id, c.now - c.fire_at)
            metrics.fire_missed(c.job_id)
        else:
            results[i] = job
    await _enqueue_following(won[0][1].rt, [(c, job, following) for _, c, job, following, _ in won])
    return results


async def _enqueue_following(rt: Runtime, won: list[tuple[_Claim, Job, datetime]]) -> None:
    try:
        await enqueue_fires(
            rt, [(job.id, following, arm_lead(c.rt, schedule_of(job, c.rt))) for c, job, following in won]
        )
    except RedisError:
        # The claims are committed: raising would make group commit retry each on its own, and every retry's
        # compare-and-set would fail, silently dropping these fires. They run; the reconcile (at the latest
        # RECONCILE_INTERVAL_SECONDS, or when Redis is back) enqueues the next ones.
        log.warning("could not enqueue the next fires of %d jobs; the reconcile will", len(won), exc_info=True)


_CLAIM_SQL = {
    postgres: "UPDATE job SET next_run_at = {} WHERE id = {} AND enabled AND next_run_at = {}".format(
        *(("$1", "$2", "$3") if postgres else ("?", "?", "?"))
    )
    for postgres in (False, True)
}
_claims = per_loop(lambda: GroupCommit(_claim_many, "claim"))


async def unclaim_fire(rt: Runtime, *, job: Job, fire_at: datetime) -> bool:
    """Hand back a fire that was claimed but never started (its worker is shutting down while it is armed):
    the job's row goes back to this fire, the next fire that the claim enqueued is dropped, and arq may
    deliver this fire once more, to whichever worker takes it next. The claim's compare-and-set in reverse:
    when someone changed the row meanwhile (disabled, rescheduled), the fire stays given up."""
    following = job.next_run_at
    if following is None or following == fire_at:
        return False
    moved = await Job.filter(id=job.id, enabled=True, next_run_at=following).update(next_run_at=fire_at)
    if not moved:
        return False
    job.next_run_at = fire_at
    await cancel_fire(rt, job_id=job.id, fire_at=following)
    await arq_protocol.allow_another_try(rt.redis, fire_id(job.id, fire_at))
    return True


async def _move_many(moves: list[tuple[Job, datetime]]) -> set[str]:
    """_move for many jobs: two statements in one transaction instead of one per job. Returns the ids
    whose row someone else changed meanwhile (they reconcile those)."""
    postgres = connections.get("default").capabilities.dialect == "postgres"

    def mark(i: int) -> str:
        return f"${i}" if postgres else "?"

    fresh = [[fire, job.id] for job, fire in moves if job.next_run_at is None]
    moved = [[fire, job.id, job.next_run_at] for job, fire in moves if job.next_run_at is not None]
    ids = [job.id for job, _ in moves]
    sql = f"UPDATE job SET next_run_at = {mark(1)} WHERE id = {mark(2)} AND enabled AND next_run_at"
    async with in_transaction() as tx:
        if postgres:
            # The two statements below lock the fresh rows, then the moved ones; every other batch locks job
            # rows in id order: take them all in that order first, or the two can deadlock.
            await tx.execute_query("SELECT id FROM job WHERE id = ANY($1) ORDER BY id FOR UPDATE", [sorted(ids)])
        if fresh:
            await tx.execute_many(f"{sql} IS NULL", fresh)
        if moved:
            await tx.execute_many(f"{sql} = {mark(3)}", moved)
    # executemany reports no per-row counts: the rows that now hold the wanted fire are the ones that moved.
    held = dict(await Job.filter(id__in=ids).values_list("id", "next_run_at"))
    lost = {job.id for job, fire in moves if held.get(job.id) != fire}
    for job, fire in moves:
        if job.id not in lost:
            job.next_run_at = fire
    return lost
