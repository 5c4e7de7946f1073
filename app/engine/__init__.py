"""The engine: everything about running jobs, behind this port.

The domain services (app.jobs, app.runs) and the entry points call only what this module exports; nothing in the
engine imports a domain service, and the handlers of job types reach it only through the `run_handler` the
entry point hands over (app.job_types.registry.run). docs/engine.md tells the life of a trigger and of a
scheduled fire, the states of a run and of a lease, and the invariants with the tests that guard them.

Inside, one module per concept:
- policy: a job's retry, overlap, catch-up and auto-pause policy;
- scheduler: one pending arq fire per enabled job, reconcile, the claim of a fire as it comes due;
- fires: `fire_job` (the arq function a fire is) and the start of the fires of one instant;
- skips: the fires that do not run, recorded with their reason;
- triggers / consumer: a trigger accepted in one Redis call, and every worker's consumer of them;
- later / later_runs: a retry after its backoff or a buffered fire, queued in arq, and `start_later` that starts it;
- starts: the one start path (lease, run record, `run.started`), for triggers, fires and later starts alike;
- runner: one handler under its lease, timeout and record; threads: the calls it left running in threads;
- runlog: what a run says while it goes (ctx.log lines, ctx.progress), kept bounded and published live; logfeed: an
  API process's one subscription to those lines; outcomes: details, output, exception type and traceback of a run;
- cancels: cancel a job's current run wherever it executes;
- runs: the run records (insert, complete and what follows: the next attempt, the failure count, auto-pause;
  record runs that never started, reap the lost); leases: the running lease;
- events, groupcommit, redis_clock, waking (the worker that sleeps until there is work), worker (standalone
  and embedded workers), context (what a worker's arq functions share), loops (reaper and reconcile), depth (what
  waits for a worker), metrics_server (a standalone worker's /metrics).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.data.jobs import Job
from app.data.runs import Run
from app.engine import cancels, depth, events, leases, loops, scheduler, threads, triggers
from app.engine.events import CHANNEL as EVENTS_CHANNEL
from app.engine.events import JOB_DELETED, RUN_CANCELLING, RUN_PROGRESS
from app.engine.fires import spec_of
from app.engine.logfeed import STALE as LOG_STALE
from app.engine.logfeed import LogFeed
from app.engine.metrics_server import MetricsPortUnavailable
from app.engine.policy import (
    BUFFER_ONE,
    CANCEL_RUNNING,
    CATCH_UPS,
    LATEST,
    MAX_ATTEMPTS,
    MAX_BACKOFF_SECONDS,
    MAX_MULTIPLIER,
    NONE,
    OVERLAPS,
    SKIP,
    CatchUp,
    Retry,
    catch_up_of,
    retry_of,
)
from app.engine.runlog import LOG_CHANNEL, Line, RunLog
from app.engine.runner import HandlerCall, RunHandler
from app.engine.runs import AUTO_PAUSE, CANCELLED_BY, SYSTEM
from app.engine.skips import REASONS as SKIP_REASONS
from app.engine.triggers import QueueUnavailable
from app.engine.worker import EmbeddedWorker, Prepare, run_standalone
from app.platform.config import Settings
from app.platform.runtime import Runtime
from app.platform.schedule import Schedule

__all__ = [
    "AUTO_PAUSE",
    "BUFFER_ONE",
    "CANCELLED_BY",
    "CANCEL_RUNNING",
    "CATCH_UPS",
    "EVENTS_CHANNEL",
    "JOB_DELETED",
    "LATEST",
    "LOG_CHANNEL",
    "LOG_STALE",
    "MAX_ATTEMPTS",
    "MAX_BACKOFF_SECONDS",
    "MAX_MULTIPLIER",
    "NONE",
    "OVERLAPS",
    "RUN_CANCELLING",
    "RUN_PROGRESS",
    "SKIP",
    "SKIP_REASONS",
    "SYSTEM",
    "CatchUp",
    "Engine",
    "HandlerCall",
    "Line",
    "LogFeed",
    "MetricsPortUnavailable",
    "Prepare",
    "QueueUnavailable",
    "Retry",
    "RunHandler",
    "RunLog",
    "cancel",
    "catch_up_of",
    "publish",
    "queue_depth",
    "reconcile",
    "reschedule",
    "retry_of",
    "run_worker",
    "running",
    "schedule",
    "schedule_of",
    "start",
    "trigger",
    "unschedule",
]

log = logging.getLogger(__name__)


async def trigger(rt: Runtime, job: Job, *, actor: str, payload: dict[str, Any] | None = None) -> str | None:
    """Run the job now (with `payload` instead of the job's, when given): its run's token, or None when it is
    running (its lease is held). QueueUnavailable when Redis cannot take it."""
    return await triggers.accept(rt, spec_of(job, payload), actor=actor)


async def schedule(rt: Runtime, job: Job) -> datetime | None:
    """Bring the job's pending fire in line with its row (enabled: one fire at its next instant; disabled: none);
    the fire that is enqueued, or None. The row is the truth: while Redis is out this only logs, and the periodic
    reconcile enqueues or removes the fire once it is back."""
    try:
        return await scheduler.reconcile_job(rt, job)
    except RedisError:
        log.warning("Redis unavailable while rescheduling %s; the reconcile will", job.id, exc_info=True)
        return None


async def reschedule(rt: Runtime, job: Job, previous_fire: datetime | None) -> datetime | None:
    """After an edit that moved the job's pending fire (its row's `next_run_at` is null now): drop the fire at
    `previous_fire` and enqueue the row's next one (none while disabled). A fire of the old schedule that a
    worker claimed already gives itself up (its job changed while armed); one that slips through (Redis out
    now) finds the row moved when it comes due, and does nothing."""
    if previous_fire is not None:
        try:
            await scheduler.cancel_fire(rt, job_id=job.id, fire_at=previous_fire)
        except RedisError:
            log.warning("could not remove the old pending fire of %s; it is dropped when it comes due", job.id)
    return await schedule(rt, job)


def schedule_of(job: Job, rt: Runtime) -> Schedule:
    """The job's schedule as the engine computes its fires (its timezone, else SCHEDULER_TIMEZONE)."""
    return scheduler.schedule_of(job, rt)


async def unschedule(rt: Runtime, job: Job) -> None:
    """Drop the pending fire of a job being deleted. Best effort: a fire that slips through (Redis out now)
    finds no job when it comes due, and does nothing."""
    if job.next_run_at is None:
        return
    try:
        await scheduler.cancel_fire(rt, job_id=job.id, fire_at=job.next_run_at)
    except RedisError:
        log.warning("could not remove the pending fire of deleted job %s; it is dropped when it comes due", job.id)


async def running(rt: Runtime, job_ids: Sequence[str]) -> dict[str, bool]:
    """The jobs among these that a run holds (their lease), each with whether a cancel was asked for that run
    (it is still stopping), in one round trip. Without Redis, the jobs with an open run record: the best evidence
    left, so that reads keep working."""
    try:
        held = await leases.holders_and_cancels(rt.redis, job_ids)
    except RedisError:
        log.warning("Redis unavailable; reporting running from open run records")
        open_ids = await Run.filter(job_id__in=list(job_ids), completed_at__isnull=True).values_list(
            "job_id", flat=True
        )
        return {str(j): False for j in open_ids}
    return {job_id: cancelling for job_id, (token, cancelling) in held.items() if token is not None}


async def cancel(rt: Runtime, job: Job, *, actor: str) -> bool:
    """Cancel the job's current run, wherever it executes (app.engine.cancels): its handler is cancelled within
    moments and the run recorded as `error` / `cancelled by <actor>` once it has stopped; a retry waiting out
    its backoff, or a queued start, ends at once, with no further attempts. False when nothing runs.
    QueueUnavailable when Redis cannot take the request."""
    details = f"{CANCELLED_BY}{actor}"
    try:
        holder = await cancels.request(rt, job.id, details, by="user")
        if holder is None:
            return False
        withdrawn = await cancels.withdraw(rt, job.id, holder, details)
    except RedisError as exc:
        raise QueueUnavailable("The job queue (Redis) is unavailable; try again shortly") from exc
    if not withdrawn:
        # Still running until its handler stops; a withdrawn start announced its end already.
        await events.publish(rt.redis, RUN_CANCELLING, job.id, running=True, cancelling=True, details=details)
    return True


async def publish(rt: Runtime, event: str, job_id: str, **data: Any) -> None:
    """Tell live subscribers on every instance that the job changed (best effort)."""
    await events.publish(rt.redis, event, job_id, **data)


async def reconcile(rt: Runtime) -> int:
    """Re-sync every job's pending fire with its row (the periodic safety net, also after Redis came back)."""
    return await scheduler.reconcile_all(rt)


async def queue_depth(redis: Redis) -> int:
    """What waits for a worker: arq's queue (fires, due or deferred) and the triggers not yet taken."""
    return await depth.queue_depth(redis)


class Engine:
    """The engine's part of an API process: its safety nets, and its embedded worker if it has one."""

    def __init__(self, background: list[asyncio.Task[None]], worker: EmbeddedWorker | None) -> None:
        self._loops = background
        self._worker = worker

    @property
    def has_worker(self) -> bool:
        return self._worker is not None

    def alive(self) -> bool:
        """For /readyz: the embedded worker's poll loop runs (True without one)."""
        return self._worker is None or self._worker.alive()

    async def stop(self, grace: float) -> None:
        """Stop the safety nets, then the worker: it takes no new runs, lets running ones finish within `grace`,
        then records the rest as `worker shut down`."""
        await loops.stop(self._loops)
        if self._worker is not None:
            await self._worker.stop(grace)


async def start(rt: Runtime, *, run_handler: RunHandler, embedded_worker: bool) -> Engine:
    """An API process's engine: the schedule reconciled (so that nextRun is true before the first request), the
    safety nets running, and an embedded worker when asked."""
    threads.install(asyncio.get_running_loop())
    try:
        await scheduler.reconcile_all(rt)
    except RedisError:
        log.warning("Redis unavailable at start-up; the schedule is reconciled once it is back")
    background = loops.start(rt)
    worker = await EmbeddedWorker.start(rt, run_handler) if embedded_worker else None
    return Engine(background, worker)


def run_worker(settings: Settings, *, prepare: Prepare) -> None:
    """A standalone worker process until it is told to stop (SIGTERM, SIGINT); raises RedisError when Redis stayed
    out of reach for longer than WORKER_REDIS_RETRY_SECONDS."""
    run_standalone(settings, prepare=prepare)
