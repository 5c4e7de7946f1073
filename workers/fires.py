"""Scheduled fires start on their instant, together.

A fire is enqueued FIRE_LEAD_SECONDS ahead of its instant (app.jobs.scheduler.arm_lead); the worker that
takes it claims it during the lead, then hands it here, armed. On the instant, the fires of this process
due on it start as one batch: their leases in one Redis call, their run records in one statement and their
`run.started` events in one round trip, then each handler starts in its own arq job. The lease is taken on
the instant, not during the lead: a fire whose job is still running then is skipped (overlap policy
`forbid`), and `running` and the trigger's 409 begin with the run.

An armed fire whose worker shuts down before its instant is handed back (scheduler.unclaim_fire): the next
worker to poll runs it, once. A killed worker's armed fires are lost: their claim moved the job to its next
fire, which runs as usual (a missed fire runs at most once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from datetime import datetime

from redis.exceptions import RedisError

from app.data.jobs import Job
from app.data.runs import Run
from app.groupcommit import per_loop
from app.jobs import scheduler
from app.platform import metrics
from app.platform.runtime import Runtime
from app.runs import lease
from app.runs import service as runs_service

log = logging.getLogger(__name__)

SKIPPED_FIRES_KEY = "jg:stats:skipped-fires"
HAND_BACK_PATIENCE_SECONDS = 5.0


@dataclass(eq=False)
class _Armed:
    job: Job
    fire_at: datetime
    attempt: int
    token: str = field(default_factory=runs_service.new_token)
    taken: bool = False  # its group has started: the batch decides its outcome
    abandoned: bool = False  # cancelled after its group started: the batch closes its run, if any
    outcome: asyncio.Future[Run | None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class FireStarter:
    """The armed fires of one process (one event loop), grouped by their instant."""

    def __init__(self) -> None:
        self._groups: dict[datetime, list[_Armed]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, rt: Runtime, job: Job, fire_at: datetime, attempt: int) -> Run | None:
        """Wait for the instant of a claimed fire, then start it with the others due on it: its run, or
        None when it does not run (still running: skipped; already has a run record).

        Cancelled while armed (shutdown), the fire is handed back before the cancellation goes on."""
        armed = _Armed(job=job, fire_at=fire_at, attempt=attempt)
        group = self._groups.get(fire_at)
        if group is None:
            # A fire claimed after its group started (a late claim) forms a new group, started at once.
            group = self._groups[fire_at] = []
            delay = max(0.0, (fire_at - rt.now()).total_seconds())
            task = asyncio.create_task(self._start_group(rt, fire_at, delay), name=f"fires-{fire_at.isoformat()}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        group.append(armed)
        try:
            # Shielded: the batch settles the outcome even when this waiter is cancelled meanwhile.
            return await asyncio.shield(armed.outcome)
        except asyncio.CancelledError:
            if armed.taken:
                armed.abandoned = True  # started (or starting): the batch records it as shut down
            else:
                group.remove(armed)
                await _hand_back(rt, armed)
            raise

    async def _start_group(self, rt: Runtime, fire_at: datetime, delay: float) -> None:
        await asyncio.sleep(delay)
        members = self._groups.pop(fire_at, [])
        for armed in members:
            armed.taken = True
        try:
            runs = await start_fires(rt, members)
        except BaseException as exc:
            for armed in members:
                if armed.outcome.done():
                    continue
                if isinstance(exc, Exception):
                    armed.outcome.set_exception(exc)
                else:
                    armed.outcome.cancel()
            if not isinstance(exc, Exception):
                raise
            log.exception("could not start the %d fires due at %s", len(members), fire_at.isoformat())
            return
        for armed, run in zip(members, runs, strict=True):
            if armed.abandoned and run is not None:
                await _close_abandoned(rt, run)
                run = None
            if not armed.outcome.done():
                armed.outcome.set_result(run)

    @property
    def armed(self) -> int:
        """How many fires wait for their instant (for tests)."""
        return sum(len(g) for g in self._groups.values())


async def _close_abandoned(rt: Runtime, run: Run) -> None:
    """Its worker shut down while the batch ran: never leave the run open or the lease held."""
    try:
        await runs_service.complete(rt, run=run, result=runs_service.ERROR, details=runs_service.WORKER_SHUT_DOWN)
    except Exception:
        # The reaper closes it once its lease lapses; the batch's other members still get their outcome.
        log.exception("could not record run %s of %s as shut down", run.id, run.job_id)


async def _hand_back(rt: Runtime, armed: _Armed) -> None:
    """scheduler.unclaim_fire, run to its end whatever further cancellations the shutdown sends."""
    work = asyncio.ensure_future(scheduler.unclaim_fire(rt, job=armed.job, fire_at=armed.fire_at))
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(HAND_BACK_PATIENCE_SECONDS):
            while not work.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(work)
    if not work.done():
        log.error("fire %s of %s could not be handed back in time", armed.fire_at.isoformat(), armed.job.id)
    elif work.exception() is not None:
        log.error(
            "fire %s of %s could not be handed back", armed.fire_at.isoformat(), armed.job.id, exc_info=work.exception()
        )
    elif work.result():
        log.info(
            "fire %s of %s handed back unstarted: the next worker runs it", armed.fire_at.isoformat(), armed.job.id
        )


async def start_fires(rt: Runtime, fires: list[_Armed]) -> list[Run | None]:
    """Start fires due on the same instant: leases, run records and events for all of them in one call each.

    A fire whose job's lease is held (still running) is skipped and counted; a job listed twice, or a fire
    that already has its run record, starts at most once."""
    first: dict[str, _Armed] = {}
    for armed in fires:
        first.setdefault(armed.job.id, armed)
    unique = await _still_claimed(list(first.values()))
    won = await lease.acquire_many(rt.redis, [(a.job.id, a.token) for a in unique], rt.settings.lease_ttl_seconds)
    starting = [a for a, ok in zip(unique, won, strict=True) if ok]
    skipped = [a for a, ok in zip(unique, won, strict=True) if not ok]
    try:
        runs = await runs_service.begin_fires(rt, [(a.job, a.token, a.fire_at, a.attempt) for a in starting])
    except BaseException:
        with contextlib.suppress(RedisError, OSError):
            await lease.release_many(rt.redis, [(a.job.id, a.token) for a in starting])
        raise
    started = {id(a): run for a, run in zip(starting, runs, strict=True)}
    duplicates = [a for a, run in zip(starting, runs, strict=True) if run is None]
    # Best effort from here: the run records are written and their leases held, so these runs start
    # whatever Redis says now (a duplicate's lease expires by itself; a skip goes uncounted).
    try:
        if duplicates:
            # A redelivered fire that ran already: its lease goes back at once.
            await lease.release_many(rt.redis, [(a.job.id, a.token) for a in duplicates])
        if skipped:
            await _count_skips(rt, skipped)
    except (RedisError, OSError):
        log.warning("could not release %d leases or count %d skipped fires", len(duplicates), len(skipped))
    return [started.get(id(a)) if first.get(a.job.id) is a else None for a in fires]


async def _still_claimed(fires: list[_Armed]) -> list[_Armed]:
    """The fires whose job row still holds what their claim left (enabled, the next fire): a job stopped,
    deleted or rescheduled during the lead gives its armed fire up, as it would have before the claim."""
    rows = await Job.filter(id__in=[a.job.id for a in fires]).values_list("id", "enabled", "next_run_at")
    now = {str(job_id): (bool(enabled), next_run_at) for job_id, enabled, next_run_at in rows}
    kept = []
    for armed in fires:
        if now.get(armed.job.id) == (True, armed.job.next_run_at):
            kept.append(armed)
        else:
            log.info(
                "fire %s of %s given up: the job changed while it was armed", armed.fire_at.isoformat(), armed.job.id
            )
    return kept


async def _count_skips(rt: Runtime, skipped: list[_Armed]) -> None:
    """Overlap policy `forbid`: the next fire is already scheduled by the claim."""
    for armed in skipped:
        metrics.fire_skipped(armed.job.id)
        log.info("fire %s of %s skipped: the previous run is still going", armed.fire_at.isoformat(), armed.job.id)
    async with rt.redis.pipeline(transaction=False) as pipe:
        for armed in skipped:
            pipe.hincrby(SKIPPED_FIRES_KEY, armed.job.id, 1)
        await pipe.execute()
    await runs_service.publish_all(
        rt, [(runs_service.FIRE_SKIPPED, a.job.id, {"fireAt": a.fire_at.isoformat()}) for a in skipped]
    )


# This process's (this event loop's) fire starter: every worker of the loop shares its groups.
starter = per_loop(FireStarter)
