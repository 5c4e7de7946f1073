"""`start_later`, the arq function a later start is (app.engine.later): a retry or a buffered fire come due.

It reads the job as it is now, starts the run through the one start path (app.engine.starts), whose lease take
finds the lease handed to this token when it was queued, and runs the handler in its arq job, like a fire. A start
whose worker shuts down before it began is handed back to arq for the next worker.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any

from app.adapters import arq as arq_protocol
from app.data import jobs as jobs_table
from app.engine import context, later, leases, runner, starts
from app.engine.fires import spec_of

log = logging.getLogger(__name__)


async def start_later(
    ctx: dict[str, Any], job_id: str, token: str, triggered_by: str, fire_at_iso: str | None, attempt: int
) -> None:
    worker = context.of(ctx)
    rt = worker.rt
    try:
        job = await jobs_table.get_or_none(job_id)
        if job is None:
            log.info("start %s of %s dropped: the job was deleted", token, job_id)
            await leases.release(rt.redis, job_id, token)
            return
        fire_at = datetime.fromisoformat(fire_at_iso) if fire_at_iso is not None else None
        start = starts.Start(spec_of(job), token, triggered_by, fire_at=fire_at, attempt=attempt, later=True)
        began = await starts.begin(rt, [start])
    except asyncio.CancelledError:
        # The worker is shutting down before the run began: the next worker takes it (its lease lives on until
        # QUEUED_LEASE_TTL_SECONDS after its due time).
        await asyncio.shield(arq_protocol.allow_another_try(rt.redis, later.arq_job_id(token)))
        raise
    run = began.runs[0]
    if run is None:
        await began.announced
        return
    await runner.execute(rt, worker.run_handler, spec_of(job), run, started=began.announced)
