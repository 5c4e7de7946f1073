"""`start_later`, the arq function a later start is (app.engine.later): a retry or a buffered fire come due.

It reads the job as it is now, starts the run through the one start path (app.engine.starts), whose lease take
finds the lease handed to this token when it was queued, and runs the handler in its arq job, like a fire. A start
whose worker shuts down before it began is handed back to arq for the next worker; one that cannot begin (the
database out of reach) is tried again a moment later, through arq's `Retry`, for as long as its lease lives. A
buffered fire of a job disabled meanwhile does not run (recorded as skipped, `disabled`); a retry does: it finishes
the run that began before the job was stopped.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any

from arq.worker import Retry

from app.adapters import arq as arq_protocol
from app.data import jobs as jobs_table
from app.engine import context, later, leases, runner, runs, skips, starts
from app.engine.fires import spec_of

log = logging.getLogger(__name__)

RETRY_SECONDS = 2.0


async def start_later(
    ctx: dict[str, Any],
    job_id: str,
    token: str,
    triggered_by: str,
    fire_at_iso: str | None,
    attempt: int,
    payload: dict[str, Any] | None = None,
) -> None:
    worker = context.of(ctx)
    rt = worker.rt
    fire_at = datetime.fromisoformat(fire_at_iso) if fire_at_iso is not None else None
    try:
        job = await jobs_table.get_or_none(job_id)
        if job is None:
            log.info("start %s of %s dropped: the job was deleted", token, job_id)
            await leases.release(rt.redis, job_id, token)
            return
        if not job.enabled and attempt == 1 and fire_at is not None:
            log.info("buffered fire %s of %s dropped: the job was stopped", fire_at_iso, job_id)
            await runs.release(rt, job_id, token)
            await skips.record(rt, [skips.Skip(job_id, fire_at, skips.DISABLED)])
            return
        spec = spec_of(job, payload)
        start = starts.Start(spec, token, triggered_by, fire_at=fire_at, attempt=attempt, later=True)
        began = await starts.begin(rt, [start])
    except asyncio.CancelledError:
        # The worker is shutting down before the run began: the next worker takes it (its lease lives on until
        # QUEUED_LEASE_TTL_SECONDS after its due time).
        await asyncio.shield(arq_protocol.allow_another_try(rt.redis, later.arq_job_id(token)))
        raise
    except Exception as exc:
        if await leases.holder(rt.redis, job_id) != token:
            log.error("start %s of %s failed and its lease is gone: it does not run", token, job_id, exc_info=True)
            raise
        log.warning("start %s of %s failed; trying again in %s s", token, job_id, RETRY_SECONDS, exc_info=True)
        await arq_protocol.allow_another_try(rt.redis, later.arq_job_id(token))
        raise Retry(defer=RETRY_SECONDS) from exc
    run = began.runs[0]
    if run is None:
        await began.announced
        return
    await runner.execute(rt, worker.run_handler, spec, run, started=began.announced)
