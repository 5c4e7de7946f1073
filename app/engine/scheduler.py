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
from app.engine import policy, skips
from app.engine.groupcommit import GroupCommit, per_loop
from app.engine.waking import wake_channel, wake_workers
from app.platform.runtime import Runtime
from app.platform.schedule import MIN_INTERVAL, Schedule, validate_schedule

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


def _replacement(job: Job, rt: Runtime, first: datetime, now: datetime) -> tuple[datetime, list[skips.Skip]]:
    """For fires from `first` on that can no longer run on time (no worker ran): the one the job's catch-up
    policy runs (`latest`: the latest missed within its window, once, however many were missed), else the next
    fire; and the missed ones that do not run, to record. Never a burst of catch-up runs."""
    schedule = schedule_of(job, rt)
    missed = skips.plan_missed(job.id, schedule, first, now, policy.catch_up_of(job, rt.settings))
    return missed.run_at or schedule.next_after(now), missed.skips


async def _desired_fire(job: Job, rt: Runtime, now: datetime) -> tuple[datetime, list[skips.Skip]]:
    """The fire to keep enqueued for an enabled job, and the missed fires to record if it moves there."""
    current: datetime | None = job.next_run_at
    schedule = schedule_of(job, rt)
    if current is None:
        # Newly enabled: start from now, no catch-up for a time the job was not scheduled.
        return schedule.next_after(now), []
    if current > now or (await fires_pending(rt, [(job.id, current)]))[0]:
        return current, []
    # Due, yet arq no longer holds it: Redis lost it while no worker ran.
    return _replacement(job, rt, current, now)


async def reconcile_job(rt: Runtime, job: Job) -> datetime | None:
    """Bring arq in line with the job's row; returns the fire that is enqueued (None when disabled)."""
    if not job.enabled:
        if job.next_run_at is not None:
            await cancel_fire(rt, job_id=job.id, fire_at=job.next_run_at)
            await Job.filter(id=job.id, enabled=False, next_run_at=job.next_run_at).update(next_run_at=None)
        return None
    desired, missed = await _desired_fire(job, rt, rt.now())
    if desired != job.next_run_at and not await _move(job, desired):
        return None  # someone else changed the row meanwhile; they reconcile it
    await skips.record(rt, missed)
    await enqueue_fires(rt, [(job.id, desired, arm_lead(rt, schedule_of(job, rt)))])
    return desired


async def _move(job: Job, fire: datetime) -> bool:
    # The version too: the fire was computed from this row's schedule, and an edit since (another schedule,
    # its own next fire still to come) must not get this one.
    query = Job.filter(id=job.id, enabled=True, next_run_at=job.next_run_at, version=job.version)
    moved = await query.update(next_run_at=fire)
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
    due = [j for j in jobs if j.next_run_at is not None and j.next_run_at <= now]
    pending = await fires_pending(rt, [(j.id, j.next_run_at) for j in due if j.next_run_at])
    held = {j.id for j, p in zip(due, pending, strict=True) if p}
    wanted: list[tuple[Job, datetime]] = []
    missed: list[skips.Skip] = []
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
                fire, not_run = _replacement(job, rt, current, now)
                wanted.append((job, fire))
                missed += not_run
        except Exception:
            log.exception("could not reconcile job %s", job.id)
    moves = [(job, fire) for job, fire in wanted if fire != job.next_run_at]
    lost = await _move_many(moves) if moves else set()
    await skips.record(rt, [s for s in missed if s.job_id not in lost])
    fires = [(job.id, fire, arm_lead(rt, schedule_of(job, rt))) for job, fire in wanted if job.id not in lost]
    await enqueue_fires(rt, fires)
    return len(wanted)


async def claim_fire(rt: Runtime, *, job_id: str, fire_at: datetime) -> Job | None:
    """Advance the job past this fire and enqueue the next; returns the job only to the one caller that wins.

    A fire that is stale (job gone, disabled, rescheduled) or already claimed returns None (a disabled job's
    is recorded as skipped). So does a fire claimed later than its job's catch-up window after its instant
    (every worker was down), or once its next fire is due too: the job's catch-up policy says which missed fire,
    if any, is enqueued in its place, to run once, and the missed fires that do not run are recorded
    (app.engine.skips). A fire claimed late within its window, with no later fire due yet, runs.

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
    moves: dict[str, _Move] = {}  # a job claimed twice in one batch: the first claim only
    stopped: list[skips.Skip] = []
    for i, c in enumerate(claims):
        job = jobs.get(c.job_id)
        if job is not None and not job.enabled and job.next_run_at in (None, c.fire_at):
            stopped.append(skips.Skip(job.id, c.fire_at, skips.DISABLED))  # stopped while on its way
        if job is None or not job.enabled or job.next_run_at != c.fire_at or job.id in moves:
            continue
        moves[job.id] = _plan_claim(i, c, job)
    won: list[_Move] = []
    if moves:
        sql = _CLAIM_SQL[connections.get("default").capabilities.dialect == "postgres"]
        async with in_transaction() as conn:
            # In id order, as every batch that moves job rows: concurrent batches never deadlock on PostgreSQL.
            # Plain SQL: building the same UPDATE through the ORM cost more CPU than the rest of a claim.
            for job_id in sorted(moves):
                move = moves[job_id]
                moved, _ = await conn.execute_query(sql, [move.following, move.job.id, move.job.next_run_at])
                if moved:
                    won.append(move)
            # Only the claim that moved the row records what was missed: once, whoever else claimed.
            await skips.write(conn, [s for move in won for s in move.missed], claims[0].now)
    await skips.record(claims[0].rt, stopped)
    results: list[Job | None] = [None] * len(claims)
    if not won:
        return results
    for move in won:
        move.job.next_run_at = move.following
        if move.late:
            log.info(
                "fire %s of %s not run: claimed %s late (its catch-up policy)",
                move.claim.fire_at,
                move.job.id,
                move.claim.now - move.claim.fire_at,
            )
        else:
            results[move.index] = move.job
    rt = won[0].claim.rt
    await skips.announce(rt, [s for move in won for s in move.missed])
    await _enqueue_following(rt, [(move.claim, move.job, move.following) for move in won])
    return results


@dataclass(slots=True)
class _Move:
    index: int
    claim: _Claim
    job: Job
    following: datetime  # the job's next fire once this one is claimed
    late: bool  # left to the catch-up policy (past its window, or a later fire due): this fire does not run
    missed: list[skips.Skip]


def _plan_claim(index: int, c: _Claim, job: Job) -> _Move:
    following = schedule_of(job, c.rt).next_after(c.fire_at)
    late = c.now - c.fire_at > timedelta(seconds=policy.catch_up_of(job, c.rt.settings).window)
    if not late and following > c.now:
        return _Move(index, c, job, following, False, [])  # on time, or late within its window: it runs
    # Past its window, or a later fire is due already (no worker could take them in time: an outage, a saturated
    # pool): the job's catch-up policy decides over all of them, this one included, as after downtime. `latest`
    # runs the latest within the window, once, at once; `none` runs none. Never a burst, and never this late one
    # and the latest one on each other's heels.
    following, missed = _replacement(job, c.rt, c.fire_at, c.now)
    return _Move(index, c, job, following, True, missed)


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

    fresh = [[fire, job.id, job.version] for job, fire in moves if job.next_run_at is None]
    moved = [[fire, job.id, job.version, job.next_run_at] for job, fire in moves if job.next_run_at is not None]
    ids = [job.id for job, _ in moves]
    # As `_move`: only a row still at the version its fire was computed from.
    sql = (
        f"UPDATE job SET next_run_at = {mark(1)} WHERE id = {mark(2)} AND version = {mark(3)} "
        "AND enabled AND next_run_at"
    )
    async with in_transaction() as tx:
        if postgres:
            # The two statements below lock the fresh rows, then the moved ones; every other batch locks job
            # rows in id order: take them all in that order first, or the two can deadlock.
            await tx.execute_query("SELECT id FROM job WHERE id = ANY($1) ORDER BY id FOR UPDATE", [sorted(ids)])
        if fresh:
            await tx.execute_many(f"{sql} IS NULL", fresh)
        if moved:
            await tx.execute_many(f"{sql} = {mark(4)}", moved)
    # executemany reports no per-row counts: the rows that now hold the wanted fire are the ones that moved.
    held = dict(await Job.filter(id__in=ids).values_list("id", "next_run_at"))
    lost = {job.id for job, fire in moves if held.get(job.id) != fire}
    for job, fire in moves:
        if job.id not in lost:
            job.next_run_at = fire
    return lost
