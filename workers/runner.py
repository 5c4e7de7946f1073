"""The run wrapper: lease heartbeat, timeout, and the run record around one handler call."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import structlog
from redis.exceptions import RedisError

from app.data.jobs import Job
from app.data.runs import Run
from app.job_types import registry
from app.platform import metrics
from app.platform.runtime import Runtime
from app.runs import lease
from app.runs import service as runs_service

log = logging.getLogger(__name__)

LEASE_LOST = "lease lost"
COMPLETE_ATTEMPTS = 5


async def _keep_lease(
    rt: Runtime, run: Run, handler: asyncio.Task[str], lost: asyncio.Event, first: asyncio.Task[bool] | None
) -> None:
    """Renew the lease on its own clock, independent of the handler. When it cannot be renewed for a
    whole lease period (moved on, or Redis unreachable), cancel the handler: by then another process
    may have declared the run lost and started the next one, and two executions must never overlap.
    `first`: a renewal already under way when the handler started, whose answer counts as the first."""
    settings = rt.settings
    last_ok = time.monotonic()
    if first is not None:
        try:
            async with asyncio.timeout(settings.heartbeat_seconds):
                renewed: bool | None = await first
        except (RedisError, OSError, TimeoutError):
            log.warning("lease renewal failed for run %s", run.id, exc_info=True)
            renewed = None
        if renewed is False:
            log.error("run %s of %s does not hold its lease; cancelling the handler", run.id, run.job_id)
            lost.set()
            handler.cancel()
            return
        if renewed:
            last_ok = time.monotonic()
    while not handler.done():
        await asyncio.sleep(settings.heartbeat_seconds)
        try:
            async with asyncio.timeout(settings.heartbeat_seconds):
                renewed = await lease.renew(rt.redis, run.job_id, run.token, settings.lease_ttl_seconds)
        except (RedisError, OSError, TimeoutError):
            log.warning("lease renewal failed for run %s", run.id, exc_info=True)
            renewed = None
        if renewed:
            last_ok = time.monotonic()
            continue
        if renewed is False or time.monotonic() - last_ok >= settings.lease_ttl_seconds - settings.heartbeat_seconds:
            log.error("run %s of %s lost its lease; cancelling the handler", run.id, run.job_id)
            lost.set()
            handler.cancel()
            return


async def _call(rt: Runtime, job: Job, run: Run) -> str:
    job_type = registry.get(job.type)
    payload = job_type.payload_model.model_validate(job.payload)
    ctx = registry.RunContext(
        job_id=job.id, run_id=run.id, payload=payload, settings=rt.settings, log=logging.getLogger(f"jobs.{job.id}")
    )
    return await job_type.handler(ctx)


async def execute(
    rt: Runtime,
    job: Job,
    run: Run,
    *,
    started: asyncio.Task[None] | None = None,
    confirming: asyncio.Task[bool] | None = None,
    launched: asyncio.Future[None] | None = None,
) -> None:
    """Run the handler under its timeout and close the run record exactly once.

    The caller holds the lease, already extended to LEASE_TTL_SECONDS, or `confirming` is extending it while
    the handler starts (a refusal cancels the handler: `lease lost`). `started`: the caller's announcement of
    the start, sent while the handler starts; awaited before the outcome is recorded (events stay in order).
    `launched`: resolved once the handler's task exists (it runs before whoever waits on `launched`).
    """
    timeout = job.timeout_seconds or rt.settings.job_timeout_seconds
    lost = asyncio.Event()
    lag = (rt.now() - run.fire_at).total_seconds() if run.fire_at is not None else None
    metrics.run_started(job.id, run.triggered_by, lag)
    # arq runs each job in its own task: what is bound here names the job and run on every line logged
    # by this run, its handler and its heartbeat (tasks created below copy the context).
    structlog.contextvars.bind_contextvars(job_id=job.id, run_id=run.id)
    handler = asyncio.create_task(_call(rt, job, run))
    keeper = asyncio.create_task(_keep_lease(rt, run, handler, lost, confirming))
    if launched is not None and not launched.done():
        launched.set_result(None)
    try:
        result, details = await _outcome(handler, timeout, run, lost)
    except asyncio.CancelledError:
        # Shutting down: stop the handler, then record it before letting the cancellation through.
        await _stop(handler, rt.settings.heartbeat_seconds)
        keeper.cancel()
        await _settle(started)
        await _complete(rt, run, runs_service.ERROR, runs_service.WORKER_SHUT_DOWN)
        raise
    keeper.cancel()
    await _settle(started)
    await _complete(rt, run, result, details)


async def _settle(started: asyncio.Task[None] | None) -> None:
    if started is not None:
        await asyncio.gather(started, return_exceptions=True)


async def _outcome(handler: asyncio.Task[str], timeout: float, run: Run, lost: asyncio.Event) -> tuple[str, str]:
    done, _ = await asyncio.wait({handler}, timeout=timeout)
    if not done:
        # Wait for the handler to unwind (the keeper still renews meanwhile), so the lease is never
        # released while its clean-up could still overlap the next run.
        await _stop(handler, timeout)
        return runs_service.ERROR, f"Timed out after {timeout:g} s"
    if handler.cancelled():
        if lost.is_set():
            metrics.lease_lost(run.job_id, "lease_lost")
            return runs_service.ERROR, LEASE_LOST
        return runs_service.ERROR, "cancelled"
    error = handler.exception()
    if error is not None:
        log.error("run %s of %s failed", run.id, run.job_id, exc_info=error)
        return runs_service.ERROR, str(error) or type(error).__name__
    return runs_service.SUCCESS, str(handler.result())


async def _stop(handler: asyncio.Task[str], patience: float) -> None:
    handler.cancel()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(patience):
            await asyncio.gather(handler, return_exceptions=True)


async def _complete(rt: Runtime, run: Run, result: str, details: str) -> None:
    """A failed write must not turn a real outcome into `worker lost`: retry with backoff."""
    for attempt in range(1, COMPLETE_ATTEMPTS + 1):
        try:
            await runs_service.complete(rt, run=run, result=result, details=details)
            return
        except Exception:
            if attempt == COMPLETE_ATTEMPTS:
                raise
            log.warning("recording run %s failed (attempt %s); retrying", run.id, attempt, exc_info=True)
            await asyncio.sleep(0.2 * 2**attempt)
