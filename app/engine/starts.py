"""The one way a run starts, for triggers and scheduled fires alike: lease, run record, `run.started`.

`begin` takes the runs due to start now (one popped trigger; the fires of one instant) and, for all of them at
once:
1. takes their leases in one Lua call (app.engine.leases): a fire acquires its job's lease if it is free (held:
   the previous run is still going, and the fire is skipped); a trigger extends the lease the API took when it
   accepted it (refused: it lapsed while the trigger waited, and the trigger is recorded as not started);
2. writes their run records in one `INSERT ... ON CONFLICT DO NOTHING RETURNING` (app.engine.runs): a trigger
   whose token, or a fire whose (job, instant), already has a record started before and does not start again;
3. announces them: `run.started` events, a trigger's pending entry dropped, a skipped fire counted and
   announced, in one pipeline sent while the handlers start.
The caller then hands each run to the runner (app.engine.runner.execute).

A trigger whose lease is known to be safe (its expiry, read by Redis's clock, is at least a run lease away:
app.engine.redis_clock) does not wait for step 1: the extension is sent with the insert, and the runner's lease
keeper treats its answer as the first renewal (a refusal cancels the handler).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import datetime

from redis.exceptions import RedisError

from app.data.runs import Run
from app.engine import events, leases, runs, triggers
from app.engine.leases import Took
from app.engine.runner import JobSpec
from app.platform import metrics
from app.platform.runtime import Runtime

log = logging.getLogger(__name__)

SKIPPED_FIRES_KEY = "jg:stats:skipped-fires"


@dataclass(eq=False, slots=True)
class Start:
    """A run due to start now."""

    job: JobSpec
    token: str
    triggered_by: str
    fire_at: datetime | None = None  # a scheduled fire's instant
    attempt: int = 1
    message: bytes | None = None  # a trigger's message, as queued (its lease was taken when it was accepted)

    @property
    def is_trigger(self) -> bool:
        return self.message is not None


@dataclass(frozen=True, slots=True)
class Began:
    runs: list[Run | None]  # per start: its run, or None when it does not run
    announced: asyncio.Task[None]  # the announcements, sent while the handlers start; the runner awaits them
    confirming: asyncio.Task[Took] | None = None  # a trusted trigger's lease extension, still under way


async def begin(rt: Runtime, starts: list[Start], *, trusted: bool = False) -> Began:
    """Start these runs (one per job); `trusted`: a lone trigger whose lease cannot have lapsed (see above)."""
    ttl = rt.settings.lease_ttl_seconds
    wanted = [(s.job.id, s.token, leases.EXTEND if s.is_trigger else leases.ACQUIRE) for s in starts]
    confirming: asyncio.Task[Took] | None = None
    if trusted:
        assert len(starts) == 1 and starts[0].is_trigger, "only a lone trigger's lease can be trusted"
        confirming = asyncio.create_task(_take_one(rt, wanted[0], ttl))
        took = [Took.EXTENDED]
    else:
        took = await leases.take(rt.redis, wanted, ttl)
    leased = [s for s, t in zip(starts, took, strict=True) if t is not Took.REFUSED]
    try:
        written = await runs.insert(
            [runs.NewRun(s.job.id, s.token, s.triggered_by, s.fire_at, s.attempt) for s in leased], rt.now()
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
    # A fire that already ran (a redelivery): the lease it just took goes back. A trigger that began already
    # keeps its lease: it is that execution's.
    duplicates = [s for s, t in zip(starts, took, strict=True) if t is Took.ACQUIRED and run_of.get(id(s)) is None]
    await _settle_refused(rt, [s for s in refused if s.is_trigger])
    # A trigger's message is no longer at risk once its token has a run record (this one, or an earlier one's).
    recorded = [s.message for s in leased if s.message is not None]
    skipped = [s for s in refused if not s.is_trigger]
    announced = asyncio.create_task(_announce(rt, outcome, recorded, skipped, duplicates))
    return Began(outcome, announced, confirming)


async def _take_one(rt: Runtime, wanted: tuple[str, str, str], ttl: float) -> Took:
    return (await leases.take(rt.redis, [wanted], ttl))[0]


async def _settle_refused(rt: Runtime, triggers_lapsed: list[Start]) -> None:
    """Triggers whose queued lease lapsed before a worker took them: recorded as not started."""
    for start in triggers_lapsed:
        await runs.record_dropped(rt, job_id=start.job.id, token=start.token, triggered_by=start.triggered_by)
        assert start.message is not None
        await triggers.forget(rt.redis, start.message)


async def _announce(
    rt: Runtime, outcome: list[Run | None], recorded: list[bytes], skipped: list[Start], duplicates: list[Start]
) -> None:
    """Best effort, like every event: the runs are recorded and their leases held, so they run whatever Redis
    says now (a pending entry left behind is dropped by the sweep once it sees the run record; a duplicate's
    lease expires by itself; a skip goes uncounted)."""
    announce: list[events.Event] = [
        (events.RUN_STARTED, run.job_id, {"running": True, "runId": run.id, "triggeredBy": run.triggered_by})
        for run in outcome
        if run is not None
    ]
    for start in skipped:
        assert start.fire_at is not None
        metrics.fire_skipped(start.job.id)
        log.info("fire %s of %s skipped: the previous run is still going", start.fire_at.isoformat(), start.job.id)
        announce.append((events.FIRE_SKIPPED, start.job.id, {"fireAt": start.fire_at.isoformat()}))
    if not announce and not recorded and not duplicates:
        return
    try:
        async with rt.redis.pipeline(transaction=False) as pipe:
            events.add_to(pipe, announce)
            if recorded:
                pipe.zrem(triggers.PENDING_KEY, *recorded)
            for start in skipped:
                pipe.hincrby(SKIPPED_FIRES_KEY, start.job.id, 1)
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
