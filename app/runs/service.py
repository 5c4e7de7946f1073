"""Runs: the trigger path, the run record's life (begin, complete, lost) and the run logs.

Every write to a run is fenced: it only applies while the run is still open (`completed_at IS NULL`)
and, for completion, only by the attempt that owns the run's token. A stale worker changes nothing.
"""

from __future__ import annotations

import logging
import secrets
from datetime import datetime

from redis.exceptions import RedisError
from tortoise import connections
from tortoise.exceptions import IntegrityError
from tortoise.expressions import Q
from tortoise.functions import Sum
from tortoise.transactions import in_transaction

from app import events, queue
from app.activity import service as activity_service
from app.errors import Conflict, Unavailable
from app.jobs import service as jobs_service
from app.jobs.models import Job
from app.observability import metrics
from app.pagination import Page, PageRequest, fetch_page
from app.runs import lease
from app.runs.models import Run, RunCount
from app.runtime import Runtime

log = logging.getLogger(__name__)

JOB_LOGS_DEFAULT, JOB_LOGS_MAX = 50, 100
ALL_LOGS_DEFAULT, ALL_LOGS_MAX = 100, 200
SUCCESS, ERROR = "success", "error"
WORKER_LOST = "worker lost"
WORKER_SHUT_DOWN = "worker shut down"
MAX_DURATION_MS = 2**31 - 1


def arq_id_of(run: Run) -> str:
    return queue.fire_id(run.job_id, run.fire_at) if run.fire_at is not None else queue.run_id(run.token)


def new_token() -> str:
    return secrets.token_hex(16)


async def list_for_job(*, job_id: str, limit: int | str | None, offset: int | str | None) -> Page[Run]:
    await jobs_service.get_or_raise(job_id=job_id)
    page = PageRequest.build(limit, offset, default=JOB_LOGS_DEFAULT, maximum=JOB_LOGS_MAX)
    return await fetch_page(Run.filter(job_id=job_id), page, total=lambda: run_totals([job_id]))


async def list_all(*, limit: int | str | None, offset: int | str | None) -> Page[Run]:
    page = PageRequest.build(limit, offset, default=ALL_LOGS_DEFAULT, maximum=ALL_LOGS_MAX)
    return await fetch_page(Run.all(), page, total=lambda: run_totals(None))


async def run_totals(job_ids: list[str] | None) -> int:
    """How many runs these jobs (None: all jobs) have, from the counters the database keeps on job_run:
    a COUNT(*) over a million runs takes tens of milliseconds, these take one indexed read."""
    counts = RunCount.all() if job_ids is None else RunCount.filter(job_id__in=job_ids)
    totals = await counts.annotate(n=Sum("runs")).first().values_list("n", flat=True)
    return int(totals or 0)  # type: ignore[arg-type]


async def pages_for_jobs(
    *, job_ids: list[str], limit: int | str | None, offset: int | str | None
) -> dict[str, Page[Run]]:
    """The same page of runs for many jobs in a constant number of queries (GraphQL's `Job.logs`)."""
    page = PageRequest.build(limit, offset, default=JOB_LOGS_DEFAULT, maximum=JOB_LOGS_MAX)
    if not job_ids:
        return {}
    conn = connections.get("default")
    marks = [f"${i}" for i in range(1, len(job_ids) + 3)]
    if conn.capabilities.dialect == "sqlite":
        marks = ["?"] * len(marks)
    # A window per job keeps each job's slice in the database, however many runs it has.
    sql = (
        "SELECT id FROM (SELECT id, ROW_NUMBER() OVER (PARTITION BY job_id ORDER BY id DESC) AS rn "
        f"FROM job_run WHERE job_id IN ({', '.join(marks[:-2])})) ranked WHERE rn > {marks[-2]} AND rn <= {marks[-1]}"
    )
    rows = await conn.execute_query_dict(sql, [*job_ids, page.offset, page.offset + page.limit])
    runs = await Run.filter(id__in=[r["id"] for r in rows]).order_by("-id")
    counts = await RunCount.filter(job_id__in=job_ids).values_list("job_id", "runs")
    totals = {str(job_id): int(n) for job_id, n in counts}
    grouped: dict[str, list[Run]] = {j: [] for j in job_ids}
    for run in runs:
        grouped[run.job_id].append(run)
    return {j: Page(items=grouped[j], total=totals.get(j, 0), limit=page.limit, offset=page.offset) for j in job_ids}


async def trigger(rt: Runtime, *, job_id: str, actor: str) -> str:
    """Run the job now, whatever its schedule or enabled flag. Conflict while it is running."""
    job = await jobs_service.get_or_raise(job_id=job_id)
    token = new_token()
    try:
        queued = await queue.lease_and_enqueue_run(
            rt.redis,
            lease_key=lease.key(job.id),
            lease_ttl=rt.settings.queued_lease_ttl_seconds,
            job_id=job.id,
            token=token,
            triggered_by=actor,
        )
    except RedisError as exc:
        raise Unavailable("The job queue (Redis) is unavailable; try again shortly") from exc
    if not queued:
        raise Conflict("Job is already running", code="already_running")
    await activity_service.record(event="jobs.trigger", actor=actor, job_id=job.id, details={"enabled": job.enabled})
    await events.publish(rt.redis, "run.queued", job.id, running=True, triggeredBy=actor)
    return token


async def begin(
    rt: Runtime, *, job: Job, token: str, triggered_by: str, fire_at: datetime | None, attempt: int
) -> Run | None:
    """Write the run record as the handler starts; None when this token or fire already has one."""
    try:
        run = await Run.create(
            job_id=job.id,
            token=token,
            attempt=attempt,
            triggered_by=triggered_by,
            fire_at=fire_at,
            started_at=rt.now(),
        )
    except IntegrityError:
        return None
    await events.publish(rt.redis, "run.started", job.id, running=True, runId=run.id, triggeredBy=triggered_by)
    return run


async def record_dropped(rt: Runtime, *, job_id: str, token: str, triggered_by: str) -> None:
    """A trigger whose lease lapsed before any worker took it: say so in the logs rather than vanish."""
    wait = rt.settings.queued_lease_ttl_seconds
    log.warning("run %s of %s dropped: no worker took it within %s s", token, job_id, wait)
    now = rt.now()
    try:
        await Run.create(
            job_id=job_id,
            token=token,
            triggered_by=triggered_by,
            started_at=now,
            completed_at=now,
            duration_ms=0,
            result=ERROR,
            details=f"not started: no worker took it within {wait:g} s",
        )
    except IntegrityError:
        return  # recorded already (a redelivery)
    metrics.run_finished(job_id, ERROR, 0)
    await events.publish(rt.redis, "run.finished", job_id, running=False, result=ERROR)


async def complete(rt: Runtime, *, run: Run, result: str, details: str) -> bool:
    """Close the run and the job's last-run fields, then release the lease. False if it was already closed."""
    done_at = rt.now()
    # The columns are 32-bit on PostgreSQL (24.8 days of ms): a run reaped long after its worker died
    # (a service down for a month) must still close, not fail on every reaper pass.
    duration = min(MAX_DURATION_MS, max(0, int((done_at - run.started_at).total_seconds() * 1000)))
    async with in_transaction() as conn:
        closed = (
            await Run.filter(id=run.id, completed_at__isnull=True, attempt=run.attempt)
            .using_db(conn)
            .update(completed_at=done_at, duration_ms=duration, result=result, details=details)
        )
        if closed:
            # A slower, older run must not overwrite the outcome of a newer one.
            newer = Q(last_run_at__isnull=True) | Q(last_run_at__lte=run.started_at)
            await (
                Job.filter(newer, id=run.job_id)
                .using_db(conn)
                .update(last_run_at=run.started_at, last_result=result, last_duration_ms=duration)
            )
    try:
        await lease.release(rt.redis, run.job_id, run.token)
    except RedisError:
        log.warning("could not release the lease of run %s; it expires by itself", run.id)
    if closed:
        metrics.run_finished(run.job_id, result, duration)
        await events.publish(
            rt.redis,
            "run.finished",
            run.job_id,
            running=False,
            runId=run.id,
            result=result,
            duration=duration,
            details=details,
        )
    return bool(closed)


async def reap_lost(rt: Runtime) -> int:
    """Close open runs whose lease has lapsed: their worker is gone. Safe to run anywhere, any number of times."""
    settle = rt.now().timestamp() - rt.settings.heartbeat_seconds
    open_runs = await Run.filter(completed_at__isnull=True).order_by("id").limit(500)
    if not open_runs:
        return 0
    holders = await lease.holders(rt.redis, sorted({r.job_id for r in open_runs}))
    reaped = 0
    for run in open_runs:
        # A run younger than a heartbeat may not have renewed yet; its lease is fresh anyway.
        if holders.get(run.job_id) == run.token or run.started_at.timestamp() > settle:
            continue
        if await complete(rt, run=run, result=ERROR, details=WORKER_LOST):
            log.warning("run %s of %s lost its worker", run.id, run.job_id)
            metrics.lease_lost(run.job_id, "worker_lost")
            reaped += 1
        # arq must never re-run it, and its leftovers must not clog the queue.
        await queue.forget(rt.redis, arq_id_of(run))
    return reaped
