"""Scheduled fires: `fire_job`, the arq function each fire is, and the start of the fires due on one instant.

A fire is enqueued FIRE_LEAD_SECONDS ahead of its instant (app.engine.scheduler.arm_lead); the worker that
takes it claims it during the lead (which schedules the next fire), then hands it here, armed. On the instant,
the fires of this process due on it start as one batch through the one start path (app.engine.starts): their
leases in one Redis call, their run records in one statement, their `run.started` events in one round trip; then
each handler runs in its own arq job. The lease is taken on the instant, not during the lead: a fire whose job
is still running then follows the job's overlap policy (skipped, buffered, or it cancels the running run and
starts once that has stopped), and `running` and the trigger's 409 begin with the run.

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
from typing import Any

from app.data import jobs as jobs_table
from app.data.jobs import Job
from app.data.runs import Run
from app.engine import cancels, context, leases, policy, runner, runs, scheduler, skips, starts
from app.engine.groupcommit import per_loop
from app.platform.runtime import Runtime
from app.platform.timefmt import iso_ms

log = logging.getLogger(__name__)

HAND_BACK_PATIENCE_SECONDS = 5.0


async def fire_job(ctx: dict[str, Any], job_id: str, fire_at_iso: str) -> None:
    """A scheduled fire, taken FIRE_LEAD_SECONDS ahead: claim it (at most once), which schedules the next
    one, then start it on its instant with the others due then, as its job's overlap policy says when the job is
    still running."""
    worker = context.of(ctx)
    fire_at = datetime.fromisoformat(fire_at_iso)
    job = await scheduler.claim_fire(worker.rt, job_id=job_id, fire_at=fire_at)
    if job is None:
        return
    run = await starter().start(worker.rt, job, fire_at)
    if isinstance(run, Contested):
        run = await _replace_running(worker.rt, job, fire_at)
    if run is not None:
        await runner.execute(worker.rt, worker.run_handler, spec_of(job), run)


class Contested:
    """A cancel_running fire that found its job running: its caller cancels that run, then starts it."""


CONTESTED = Contested()
Outcome = Run | Contested | None
# How long a cancel_running fire waits for the run it cancelled to stop, at most (and never past its job's next
# fire): a handler that ignores cancellation keeps its job, and the fire is skipped (`overlap`).
REPLACE_PATIENCE_SECONDS = 60.0
REPLACE_POLL_SECONDS = 0.02


async def _replace_running(rt: Runtime, job: Job, fire_at: datetime) -> Run | None:
    """Overlap policy cancel_running: cancel the job's current run (a retry in its backoff, or a buffered fire,
    ends at once), wait until its handler has stopped and its lease is free, then start this fire."""
    details = f"{runs.CANCELLED_BY}policy: overlap cancel_running, for the fire at {iso_ms(fire_at)}"
    holder = await cancels.request(rt, job.id, details, by="policy")
    if holder is not None:
        await cancels.withdraw(rt, job.id, holder, details)
    patience = REPLACE_PATIENCE_SECONDS
    if job.next_run_at is not None:
        patience = min(patience, (job.next_run_at - rt.now()).total_seconds())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max(0.0, patience)
    while loop.time() < deadline:
        if await leases.holder(rt.redis, job.id) is None:
            break
        await asyncio.sleep(REPLACE_POLL_SECONDS)
    fresh = await jobs_table.get_or_none(job.id)
    if fresh is None or not fresh.enabled:
        # Stopped (or deleted) while this fire waited for the run it replaces.
        await skips.record(rt, [skips.Skip(job.id, fire_at, skips.DISABLED)] if fresh is not None else [])
        return None
    # Free by now, or the fire gives up: a last try, whose refusal is recorded as an overlap skip.
    start = starts.Start(spec_of(fresh), runs.new_token(), runs.SCHEDULER, fire_at=fire_at)
    began = await starts.begin(rt, [start])
    await began.announced
    return began.runs[0]


def spec_of(job: Job, payload: dict[str, Any] | None = None) -> runner.JobSpec:
    """What a run of the job is given: its type, timeout, and its payload unless the run has its own."""
    given = job.payload if payload is None else payload
    return runner.JobSpec(id=job.id, type=job.type, payload=given, timeout=job.timeout_seconds)


@dataclass(eq=False)
class _Armed:
    job: Job
    fire_at: datetime
    token: str = field(default_factory=runs.new_token)
    taken: bool = False  # its group has started: the batch decides its outcome
    abandoned: bool = False  # cancelled after its group started: the batch closes its run, if any
    outcome: asyncio.Future[Outcome] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class FireStarter:
    """The armed fires of one process (one event loop), grouped by their instant."""

    def __init__(self) -> None:
        self._groups: dict[datetime, list[_Armed]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, rt: Runtime, job: Job, fire_at: datetime) -> Outcome:
        """Wait for the instant of a claimed fire, then start it with the others due on it: its run, or
        None when it does not run (still running: skipped or buffered; already has a run record), or CONTESTED
        (still running, and its overlap policy is cancel_running).

        Cancelled while armed (shutdown), the fire is handed back before the cancellation goes on."""
        armed = _Armed(job=job, fire_at=fire_at)
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
            started = await start_fires(rt, members)
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
        for armed, run in zip(members, started, strict=True):
            if armed.abandoned and isinstance(run, Run):
                await _close_abandoned(rt, run)
                run = None
            if not armed.outcome.done():
                armed.outcome.set_result(run)

    @property
    def armed(self) -> int:
        """How many fires wait for their instant (for tests)."""
        return sum(len(g) for g in self._groups.values())


async def start_fires(rt: Runtime, fires: list[_Armed]) -> list[Outcome]:
    """Start fires due on the same instant (app.engine.starts); a job listed twice starts at most once."""
    first: dict[str, _Armed] = {}
    for armed in fires:
        first.setdefault(armed.job.id, armed)
    unique = await _still_claimed(rt, list(first.values()))
    began = await starts.begin(
        rt,
        [
            starts.Start(spec_of(a.job), a.token, runs.SCHEDULER, fire_at=a.fire_at, overlap=policy.overlap_of(a.job))
            for a in unique
        ],
    )
    await began.announced  # the events before the handlers: the fires of an instant are announced together
    started: dict[int, Outcome] = {
        id(a): CONTESTED if contested else run
        for a, run, contested in zip(unique, began.runs, began.contested, strict=True)
    }
    return [started.get(id(a)) if first.get(a.job.id) is a else None for a in fires]


async def _still_claimed(rt: Runtime, fires: list[_Armed]) -> list[_Armed]:
    """The fires whose job row still holds what their claim left (enabled, the next fire, the schedule): a job
    stopped, deleted, edited to another schedule or rescheduled during the lead gives its armed fire up, as it
    would have before the claim (a stopped job's is recorded as skipped: `disabled`)."""
    columns = ("id", "enabled", "next_run_at", "schedule", "timezone")
    rows = await Job.filter(id__in=[a.job.id for a in fires]).values_list(*columns)
    now = {str(job_id): (bool(enabled), *rest) for job_id, enabled, *rest in rows}
    kept = []
    stopped = []
    for armed in fires:
        claimed = (True, armed.job.next_run_at, armed.job.schedule, armed.job.timezone)
        if now.get(armed.job.id) == claimed:
            kept.append(armed)
            continue
        log.info("fire %s of %s given up: the job changed while it was armed", armed.fire_at.isoformat(), armed.job.id)
        if now.get(armed.job.id, (True, None))[0] is False:
            stopped.append(skips.Skip(armed.job.id, armed.fire_at, skips.DISABLED))
    await skips.record(rt, stopped)
    return kept


async def _close_abandoned(rt: Runtime, run: Run) -> None:
    """Its worker shut down while the batch ran: never leave the run open or the lease held."""
    try:
        await runs.complete(rt, run=run, result=runs.ERROR, details=runs.WORKER_SHUT_DOWN)
    except Exception:
        # The reaper closes it once its lease lapses; the batch's other members still get their outcome.
        log.exception("could not record run %s of %s as shut down", run.id, run.job_id)


async def _hand_back(rt: Runtime, armed: _Armed) -> None:
    """scheduler.unclaim_fire, run to its end whatever further cancellations the shutdown sends (bounded)."""
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


# This process's (this event loop's) fire starter: every worker of the loop shares its groups.
starter = per_loop(FireStarter)
