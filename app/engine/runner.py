"""The runner: one handler call under its lease, its timeout and its run record.

The lease is renewed on its own clock, independent of the handler. A handler whose lease is lost, or cannot be
renewed for a whole lease period, is cancelled: by then another process may have declared the run lost. A handler
that times out or whose worker shuts down is cancelled too; in every case the run stays open, and its lease
renewed, until the handler has really ended, its calls still running in threads (app.engine.threads) included, so
that the lease is never released while the job's next run could start beside it. The run record is closed exactly
once, fenced (app.engine.runs.complete).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog
from redis.exceptions import RedisError

from app.data.runs import Run
from app.engine import cancels, leases, outcomes, runs, threads
from app.engine.outcomes import Outcome
from app.engine.runlog import RunLog
from app.platform import metrics
from app.platform.aio import run_to_the_end
from app.platform.config import Settings
from app.platform.runtime import Runtime

log = logging.getLogger(__name__)

LEASE_LOST = "lease lost"
COMPLETE_ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class HandlerCall:
    """What a job type's handler is called with, as the engine knows it (app.job_types turns it into the
    handler's RunContext)."""

    job_id: str
    run_id: int
    type: str
    payload: dict[str, Any]
    settings: Settings
    log: RunLog  # the handler's ctx.log and ctx.progress
    attempt: int = 1  # retries of a failed run count up (app.engine.policy)


# What the handler returns: its run's details (a string) or output (a JSON object; app.engine.outcomes).
RunHandler = Callable[[HandlerCall], Awaitable[object]]


@dataclass(frozen=True, slots=True)
class JobSpec:
    """What a run needs of its job: a trigger's message carries it, a fire reads it with its claim."""

    id: str
    type: str
    payload: dict[str, Any]
    timeout: float | None


async def execute(
    rt: Runtime,
    run_handler: RunHandler,
    job: JobSpec,
    run: Run,
    *,
    started: asyncio.Task[None] | None = None,
    confirming: asyncio.Task[leases.Took] | None = None,
    launched: asyncio.Future[None] | None = None,
) -> None:
    """Run the handler under its timeout and close the run record exactly once.

    The caller holds the lease, already extended to LEASE_TTL_SECONDS, or `confirming` is extending it while
    the handler starts (a refusal cancels the handler: `lease lost`). `started`: the caller's announcement of
    the start, sent while the handler starts; awaited before the outcome is recorded (events stay in order).
    `launched`: resolved once the handler's task exists (it runs before whoever waits on `launched`).
    """
    timeout = job.timeout or rt.settings.job_timeout_seconds
    lost = asyncio.Event()
    lag = (rt.now() - run.fire_at).total_seconds() if run.fire_at is not None else None
    metrics.run_started(job.id, run.triggered_by, lag)
    # Each run has its own task: what is bound here names the job and run on every line logged by this run, its
    # handler and its heartbeat (tasks created below copy the context).
    structlog.contextvars.bind_contextvars(job_id=job.id, run_id=run.id)
    run_log = RunLog(rt, job_id=job.id, run_id=run.id)
    call = HandlerCall(
        job_id=job.id,
        run_id=run.id,
        type=job.type,
        payload=job.payload,
        settings=rt.settings,
        log=run_log,
        attempt=run.attempt,
    )
    context, calls_in_threads = threads.handler_context()
    handler: asyncio.Task[object] = asyncio.create_task(_call(run_handler, call), context=context)
    # Cancel requests for this run reach its handler through this (app.engine.cancels).
    watch = cancels.watch(run.token, handler)
    keeper = asyncio.create_task(_keep_lease(rt, run, watch, lost, confirming))
    if launched is not None and not launched.done():
        launched.set_result(None)
    outcome: Outcome | None = None
    try:
        try:
            outcome = await _outcome(rt, handler, timeout, run, lost, watch)
            await _threads_ended(calls_in_threads, run)
            # Its lines are all written before the run is closed: a follower that sees it closed has them all.
            await run_log.close()
        except asyncio.CancelledError:
            # Shutting down: stop the handler and record the run before the cancellation goes on, whatever further
            # cancellations arrive meanwhile (a shutdown repeats them); the lease is renewed until then. An outcome
            # known already (the handler had ended) is the one recorded.
            await run_to_the_end(_shut_down(rt, watch, calls_in_threads, run, run_log, started, outcome))
            raise
    finally:
        keeper.cancel()
        cancels.unwatch(run.token)
    await _settle(started)
    await _complete(rt, run, outcome, final=watch.details is not None)


async def _shut_down(
    rt: Runtime,
    watch: cancels.Watch,
    calls: set[Any],
    run: Run,
    run_log: RunLog,
    started: asyncio.Task[None] | None,
    outcome: Outcome | None,
) -> None:
    await _stop(watch.handler, run, rt.settings.heartbeat_seconds)
    await _threads_ended(calls, run)
    await run_log.close()
    await _settle(started)
    if outcome is not None:
        await _complete(rt, run, outcome, final=watch.details is not None)
    elif watch.details is not None:
        await _complete(rt, run, Outcome(runs.ERROR, watch.details), final=True)
    else:
        await _complete(rt, run, Outcome(runs.ERROR, runs.WORKER_SHUT_DOWN))


async def _call(run_handler: RunHandler, call: HandlerCall) -> object:
    return await run_handler(call)


async def _keep_lease(
    rt: Runtime,
    run: Run,
    watch: cancels.Watch,
    lost: asyncio.Event,
    first: asyncio.Task[leases.Took] | None,
) -> None:
    """Renew the lease every HEARTBEAT_SECONDS until cancelled (once the run is over). When it cannot be renewed
    for a whole lease period (moved on, or Redis unreachable), cancel the handler: by then another process may
    have declared the run lost and started the next one. A renewal that finds a cancel asked for the run cancels
    the handler too (should the request's message have missed this process) and goes on renewing until it has
    stopped. `first`: a renewal already under way when the handler started, whose answer counts as the first."""
    settings = rt.settings
    last_ok = time.monotonic()
    if first is not None:
        took = await _first_renewal(rt, run, first)
        if took is leases.Took.REFUSED:
            log.error("run %s of %s does not hold its lease; cancelling the handler", run.id, run.job_id)
            lost.set()
            watch.handler.cancel()
            return
        if took is leases.Took.CANCELLED:
            watch.cancel(await cancels.details_for(rt, run.job_id, run.token) or f"{runs.CANCELLED_BY}request")
        if took is not None:
            last_ok = time.monotonic()
    while True:
        await asyncio.sleep(settings.heartbeat_seconds)
        try:
            async with asyncio.timeout(settings.heartbeat_seconds):
                renewed = await leases.renew(rt.redis, run.job_id, run.token, settings.lease_ttl_seconds)
        except (RedisError, OSError, TimeoutError):
            log.warning("lease renewal failed for run %s", run.id, exc_info=True)
            renewed = None
        if isinstance(renewed, str):
            watch.cancel(renewed)
        if renewed:
            last_ok = time.monotonic()
            continue
        if renewed is False or time.monotonic() - last_ok >= settings.lease_ttl_seconds - settings.heartbeat_seconds:
            log.error("run %s of %s lost its lease; cancelling the handler", run.id, run.job_id)
            lost.set()
            watch.handler.cancel()
            return


async def _first_renewal(rt: Runtime, run: Run, first: asyncio.Task[leases.Took]) -> leases.Took | None:
    try:
        async with asyncio.timeout(rt.settings.heartbeat_seconds):
            return await first
    except (RedisError, OSError, TimeoutError):
        log.warning("lease renewal failed for run %s", run.id, exc_info=True)
        return None


async def _threads_ended(calls: set[Any], run: Run) -> None:
    if calls:
        log.warning(
            "run %s of %s: its handler has ended but %d call(s) it made still run in threads; the run stays open, "
            "and its lease held, until they end",
            run.id,
            run.job_id,
            len(calls),
        )
        await threads.ended(calls)


async def _settle(started: asyncio.Task[None] | None) -> None:
    if started is not None:
        await asyncio.gather(started, return_exceptions=True)


async def _outcome(
    rt: Runtime, handler: asyncio.Task[object], timeout: float, run: Run, lost: asyncio.Event, watch: cancels.Watch
) -> Outcome:
    done, _ = await asyncio.wait({handler}, timeout=timeout)
    if watch.details is not None:
        # Cancelled on request: whatever the handler made of it, the run was cancelled (once it has stopped).
        if not done:
            await _stop(handler, run, timeout)
        return Outcome(runs.ERROR, watch.details)
    if not done:
        await _stop(handler, run, timeout)
        return Outcome(runs.ERROR, f"Timed out after {timeout:g} s")
    if handler.cancelled():
        if lost.is_set():
            metrics.lease_lost(run.job_id, "lease_lost")
            return Outcome(runs.ERROR, LEASE_LOST)
        return Outcome(runs.ERROR, "cancelled")
    error = handler.exception()
    if error is not None:
        log.error("run %s of %s failed", run.id, run.job_id, exc_info=error)
        return outcomes.of_error(error)
    return outcomes.of_return(handler.result(), rt.settings)


async def _stop(handler: asyncio.Task[object], run: Run, patience: float) -> None:
    """Cancel the handler and wait until it has really ended, its clean-up included (the keeper renews the lease
    meanwhile): the lease is never released while the handler could still overlap the job's next run. One that
    ignores the cancellation holds its job until it ends."""
    handler.cancel()
    done, _ = await asyncio.wait({handler}, timeout=patience)
    if not done:
        log.warning(
            "run %s of %s: its handler has not stopped %g s after it was cancelled; the run stays open, and its lease "
            "held, until it does",
            run.id,
            run.job_id,
            patience,
        )
        await asyncio.wait({handler})


async def _complete(rt: Runtime, run: Run, outcome: Outcome, *, final: bool = False) -> None:
    """A failed write must not turn a real outcome into `worker lost`: retry with backoff."""
    for attempt in range(1, COMPLETE_ATTEMPTS + 1):
        try:
            await runs.complete(
                rt,
                run=run,
                result=outcome.result,
                details=outcome.details,
                final=final,
                output=outcome.output,
                error_type=outcome.error_type,
                traceback=outcome.traceback,
            )
            return
        except Exception:
            if attempt == COMPLETE_ATTEMPTS:
                raise
            log.warning("recording run %s failed (attempt %s); retrying", run.id, attempt, exc_info=True)
            await asyncio.sleep(0.2 * 2**attempt)
