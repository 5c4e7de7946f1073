"""The one way a run starts, for triggers, scheduled fires and later starts alike: lease, run record, `run.started`.

`begin` takes the runs due to start now (one popped trigger; the fires of one instant; a retry or buffered fire
come due, app.engine.later) and, for all of them at once:
1. takes their leases in one Lua call (app.engine.leases). A fire acquires its job's lease if it is free; held,
   the previous run is still going, and the job's overlap policy decides: `skip` records the fire as skipped
   (`overlap`), `buffer_one` makes it the job's buffered fire (unless one is already: skipped), `cancel_running`
   hands it back to its caller, which cancels the running run and then starts it (app.engine.fires). A trigger
   extends the lease the API took when it accepted it (refused: it lapsed while it waited, and the trigger is
   recorded as not started); a later start finds the lease handed to it when it was queued, or takes it again if
   that lapsed and nobody holds it (held by another run: recorded as not started). A token a cancel was asked
   for does not start, and is recorded as cancelled;
2. writes their run records in one `INSERT ... ON CONFLICT DO NOTHING RETURNING` (app.engine.runs): a trigger
   whose token, or a fire whose (job, instant, attempt), already has a record started before and does not start
   again;
3. announces them: `run.started` events and a trigger's pending entry dropped in one pipeline sent while the
   handlers start, a skipped fire recorded (app.engine.skips).
The caller then hands each run to the runner (app.engine.runner.execute).

A trigger whose lease is known to be safe (its expiry, read by Redis's clock, is at least a run lease away:
app.engine.redis_clock) does not wait for step 1: the extension is sent with the insert, and the runner's lease
keeper treats its answer as the first renewal (a refusal cancels the handler).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from datetime import datetime

from redis.exceptions import RedisError

from app.data.runs import Run
from app.engine import cancels, events, leases, policy, runs, skips, triggers
from app.engine.leases import Took
from app.engine.runner import JobSpec
from app.platform.runtime import Runtime
from app.platform.timefmt import iso_ms

log = logging.getLogger(__name__)


@dataclass(eq=False, slots=True)
class Start:
    """A run due to start now."""

    job: JobSpec
    token: str
    triggered_by: str
    fire_at: datetime | None = None  # a scheduled fire's instant
    attempt: int = 1
    message: bytes | None = None  # a trigger's message, as queued (its lease was taken when it was accepted)
    later: bool = False  # a later start (a retry, a buffered fire): its lease was handed to it when it was queued
    overlap: str = policy.SKIP  # a fire's overlap policy

    @property
    def is_trigger(self) -> bool:
        return self.message is not None

    @property
    def is_fire(self) -> bool:
        return not self.is_trigger and not self.later

    def wanted(self) -> leases.Want:
        if self.is_trigger:
            return leases.Want(self.job.id, self.token, leases.EXTEND)
        if self.is_fire and self.overlap == policy.BUFFER_ONE:
            assert self.fire_at is not None
            return leases.Want(self.job.id, self.token, leases.BUFFER, self.fire_at.isoformat())
        # A fire takes a free lease; a later start finds its own, or takes it back if it lapsed meanwhile.
        return leases.Want(self.job.id, self.token, leases.ACQUIRE)


@dataclass(frozen=True, slots=True)
class Began:
    runs: list[Run | None]  # per start: its run, or None when it does not run
    announced: asyncio.Task[None]  # the announcements, sent while the handlers start; the runner awaits them
    confirming: asyncio.Task[Took] | None = None  # a trusted trigger's lease extension, still under way
    # per start: a cancel_running fire that found its job running (the caller cancels that run, then starts it)
    contested: list[bool] = field(default_factory=list)


async def begin(rt: Runtime, starts: list[Start], *, trusted: bool = False) -> Began:
    """Start these runs (one per job); `trusted`: a lone trigger whose lease cannot have lapsed (see above)."""
    ttl = rt.settings.lease_ttl_seconds
    wanted = [s.wanted() for s in starts]
    confirming: asyncio.Task[Took] | None = None
    if trusted:
        assert len(starts) == 1 and starts[0].is_trigger, "only a lone trigger's lease can be trusted"
        confirming = asyncio.create_task(_take_one(rt, wanted[0], ttl))
        took = [Took.EXTENDED]
    else:
        took = await leases.take(rt.redis, wanted, ttl)
    leased = [s for s, t in zip(starts, took, strict=True) if t in (Took.EXTENDED, Took.ACQUIRED)]
    try:
        written = await runs.insert(
            [runs.NewRun(s.job.id, s.token, s.triggered_by, s.fire_at, s.attempt, s.job.payload) for s in leased],
            rt.now(),
        )
    except BaseException:
        if confirming is not None:
            confirming.cancel()
        # Leases this call acquired go back (a trigger's stays: it lapses, and the sweep records the trigger).
        fresh = [(s.job.id, s.token) for s, t in zip(starts, took, strict=True) if t is Took.ACQUIRED]
        with contextlib.suppress(RedisError, OSError):
            await leases.release_many(rt.redis, fresh)
        raise
    run_of = {id(s): run for s, run in zip(leased, written, strict=True)}
    outcome = [run_of.get(id(s)) for s in starts]
    refused = [s for s, t in zip(starts, took, strict=True) if t is Took.REFUSED]
    contested = [
        t is Took.REFUSED and s.is_fire and s.overlap == policy.CANCEL_RUNNING
        for s, t in zip(starts, took, strict=True)
    ]
    # A fire that already ran (a redelivery): the lease it just took goes back. A trigger that began already
    # keeps its lease: it is that execution's.
    duplicates = [s for s, t in zip(starts, took, strict=True) if t is Took.ACQUIRED and run_of.get(id(s)) is None]
    await _settle_refused(rt, [s for s in refused if not s.is_fire])
    await _settle_cancelled(rt, [s for s, t in zip(starts, took, strict=True) if t is Took.CANCELLED])
    # A trigger's message is no longer at risk once its token has a run record (this one, or an earlier one's).
    recorded = [s.message for s in leased if s.message is not None]
    skipped = [s for s, c in zip(starts, contested, strict=True) if s in refused and s.is_fire and not c]
    buffered = [s for s, t in zip(starts, took, strict=True) if t is Took.BUFFERED]
    announced = asyncio.create_task(_announce(rt, outcome, recorded, skipped, buffered, duplicates))
    return Began(outcome, announced, confirming, contested)


async def _take_one(rt: Runtime, wanted: leases.Want, ttl: float) -> Took:
    return (await leases.take(rt.redis, [wanted], ttl))[0]


async def _settle_refused(rt: Runtime, lapsed: list[Start]) -> None:
    """Triggers and later starts whose queued lease lapsed before a worker took them: recorded as not started."""
    for start in lapsed:
        if start.is_trigger:
            await runs.record_dropped(rt, job_id=start.job.id, token=start.token, triggered_by=start.triggered_by)
            assert start.message is not None
            await triggers.forget(rt.redis, start.message)
            continue
        log.warning(
            "%s's start %s (attempt %d) lost its lease before a worker took it",
            start.job.id,
            start.token,
            start.attempt,
        )
        await _not_started(rt, start, "not started: its lease lapsed before a worker took it")


async def _not_started(rt: Runtime, start: Start, details: str) -> None:
    await runs.record_not_started(
        rt,
        job_id=start.job.id,
        token=start.token,
        triggered_by=start.triggered_by,
        fire_at=start.fire_at,
        attempt=start.attempt,
        details=details,
    )


async def _settle_cancelled(rt: Runtime, cancelled: list[Start]) -> None:
    """Runs cancelled before they started (a queued trigger, a later start taken as the cancel came in)."""
    for start in cancelled:
        details = await cancels.details_for(rt, start.job.id, start.token) or f"{runs.CANCELLED_BY}request"
        await _not_started(rt, start, details)
        if start.message is not None:
            await triggers.forget(rt.redis, start.message)


async def _announce(
    rt: Runtime,
    outcome: list[Run | None],
    recorded: list[bytes],
    skipped: list[Start],
    buffered: list[Start],
    duplicates: list[Start],
) -> None:
    """Best effort, like every event: the runs are recorded and their leases held, so they run whatever Redis
    says now (a pending entry left behind is dropped by the sweep once it sees the run record; a duplicate's
    lease expires by itself; a skip that cannot be recorded is logged)."""
    announce: list[events.Event] = [
        (events.RUN_STARTED, run.job_id, {"running": True, "runId": run.id, "triggeredBy": run.triggered_by})
        for run in outcome
        if run is not None
    ]
    for start in buffered:
        assert start.fire_at is not None
        log.info("fire %s of %s buffered: it starts when the running run ends", start.fire_at.isoformat(), start.job.id)
        announce.append((events.FIRE_BUFFERED, start.job.id, {"running": True, "fireAt": iso_ms(start.fire_at)}))
    if skipped:
        await skips.record(rt, [_overlap_skip(s) for s in skipped])
    if not announce and not recorded and not duplicates:
        return
    try:
        async with rt.redis.pipeline(transaction=False) as pipe:
            events.add_to(pipe, announce)
            if recorded:
                pipe.zrem(triggers.PENDING_KEY, *recorded)
            await pipe.execute()
        if duplicates:
            await leases.release_many(rt.redis, [(s.job.id, s.token) for s in duplicates])
    except (RedisError, OSError):
        log.warning("could not announce %d run starts", len(outcome), exc_info=True)
        return
    except Exception:
        # Never the runs' undoing: they are recorded, their leases held, and they start whatever happens here.
        log.exception("could not announce %d run starts", len(outcome))
        return
    events.published(announce)


def _overlap_skip(start: Start) -> skips.Skip:
    assert start.fire_at is not None
    return skips.Skip(start.job.id, start.fire_at, skips.OVERLAP)
