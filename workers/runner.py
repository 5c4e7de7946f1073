"""The run wrapper: lease heartbeat, timeout, and the run record around one handler call."""

from __future__ import annotations

import asyncio
import logging

from app.job_types import registry
from app.jobs.models import Job
from app.runs import lease
from app.runs import service as runs_service
from app.runs.models import Run
from app.runtime import Runtime

log = logging.getLogger(__name__)


class LeaseLost(Exception):
    """The lease moved on while the handler ran: someone declared this worker dead."""


async def _keep_lease(rt: Runtime, run: Run, handler: asyncio.Task[str]) -> None:
    """Renew the lease on its own clock, independent of the handler; cancel the handler if it is lost,
    so that a run declared lost never keeps executing beside its successor."""
    settings = rt.settings
    while not handler.done():
        await asyncio.sleep(settings.heartbeat_seconds)
        try:
            renewed = await lease.renew(rt.redis, run.job_id, run.token, settings.lease_ttl_seconds)
        except Exception:
            # Redis blip: keep trying until the lease itself would have lapsed.
            log.warning("lease renewal failed for run %s", run.id, exc_info=True)
            continue
        if not renewed:
            log.error("run %s of %s lost its lease; cancelling the handler", run.id, run.job_id)
            handler.cancel(LeaseLost.__name__)
            return


async def _call(rt: Runtime, job: Job, run: Run) -> str:
    job_type = registry.get(job.type)
    payload = job_type.payload_model.model_validate(job.payload)
    ctx = registry.RunContext(
        job_id=job.id, run_id=run.id, payload=payload, settings=rt.settings, log=logging.getLogger(f"jobs.{job.id}")
    )
    return await job_type.handler(ctx)


async def execute(rt: Runtime, job: Job, run: Run) -> None:
    """Run the handler under its timeout and close the run record exactly once."""
    timeout = job.timeout_seconds or rt.settings.job_timeout_seconds
    # The lease was taken with the queued TTL; from here on it lives by heartbeat.
    await lease.renew(rt.redis, run.job_id, run.token, rt.settings.lease_ttl_seconds)
    handler = asyncio.create_task(_call(rt, job, run))
    keeper = asyncio.create_task(_keep_lease(rt, run, handler))
    try:
        result, details = await _outcome(handler, timeout, run)
    except asyncio.CancelledError:
        handler.cancel()
        # Shutting down: record it before letting the cancellation through.
        await runs_service.complete(rt, run=run, result=runs_service.ERROR, details=runs_service.WORKER_SHUT_DOWN)
        raise
    finally:
        keeper.cancel()
    await runs_service.complete(rt, run=run, result=result, details=details)


async def _outcome(handler: asyncio.Task[str], timeout: float, run: Run) -> tuple[str, str]:
    try:
        summary = await asyncio.wait_for(asyncio.shield(handler), timeout)
    except TimeoutError:
        handler.cancel()
        return runs_service.ERROR, f"Timed out after {timeout:g} s"
    except asyncio.CancelledError:
        if handler.cancelled() and not _self_cancelled():
            return runs_service.ERROR, "lease lost"
        raise
    except Exception as exc:
        log.exception("run %s of %s failed", run.id, run.job_id)
        return runs_service.ERROR, str(exc) or type(exc).__name__
    return runs_service.SUCCESS, str(summary)


def _self_cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
