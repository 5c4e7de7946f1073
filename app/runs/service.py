"""Runs: the trigger path, the run record's life (begin, complete, lost) and the run logs.

Every write to a run is fenced: it only applies while the run is still open (`completed_at IS NULL`)
and, for completion, only by the attempt that owns the run's token. A stale worker changes nothing.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from redis.exceptions import RedisError
from tortoise import connections
from tortoise.exceptions import IntegrityError
from tortoise.functions import Sum
from tortoise.transactions import in_transaction

from app import events, queue
from app.activity import service as activity_service
from app.data import jobs as jobs_table
from app.data.jobs import Job
from app.data.runs import Run, RunCount
from app.groupcommit import GroupCommit, per_loop
from app.platform import metrics
from app.platform.errors import Conflict, Unavailable
from app.platform.pagination import Page, PageRequest, fetch_page
from app.platform.runtime import Runtime
from app.platform.timefmt import iso_ms, utcnow
from app.runs import lease

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
    await jobs_table.get_or_raise(job_id=job_id)
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
    """Run the job now, whatever its schedule or enabled flag. Conflict while it is running.

    The run is handed straight to the workers (`queue.lease_and_dispatch_run`): the message carries the job
    as it is now, so that the worker that takes it starts the handler without reading the job again. In a
    process with an embedded worker that has a free slot, that worker takes it from here, and the call
    returns once its handler has started."""
    job = await jobs_table.get_or_raise(job_id=job_id)
    token = new_token()
    run = queue.DirectRun(
        job_id=job.id,
        token=token,
        type=job.type,
        payload=job.payload,
        timeout=job.timeout_seconds,
        triggered_by=actor,
    )
    # This process's embedded worker takes the run itself when it has a free slot: no list, no pop.
    local = rt.local_runner
    here = local is not None and await local.reserve()
    handed_over = False
    try:
        try:
            dispatched = await _dispatch(rt, job.id, run, actor, run_here=here)
        except RedisError:
            if not here:
                raise
            # The script may have run with its reply lost: the lease is ours and the message only in the pending
            # set, where no worker looks for it. The same call again is safe (one lease per token), and in that
            # case it pushes the message for the workers.
            dispatched = await _dispatch(rt, job.id, run, actor, run_here=here)
        if here and local is not None and dispatched.message is not None:
            handed_over = True
            await local.start(dispatched.message)  # back once its handler has started
    except RedisError as exc:
        raise Unavailable("The job queue (Redis) is unavailable; try again shortly") from exc
    finally:
        if here and local is not None and not handed_over:
            local.release()  # not taken here (refused, queued, failed or cancelled): the slot is free again
    if not dispatched.accepted:
        raise Conflict("Job is already running", code="already_running")
    metrics.event_published("run.queued")
    await activity_service.record(event="jobs.trigger", actor=actor, job_id=job.id, details={"enabled": job.enabled})
    return token


async def _dispatch(rt: Runtime, job_id: str, run: queue.DirectRun, actor: str, *, run_here: bool) -> queue.Dispatched:
    return await queue.lease_and_dispatch_run(
        rt.redis,
        lease_key=lease.key(job_id),
        lease_ttl=rt.settings.queued_lease_ttl_seconds,
        run=run,
        channel=events.CHANNEL,
        event=event_json("run.queued", job_id, running=True, triggeredBy=actor),
        run_here=run_here,
    )


def event_json(event: str, job_id: str, **data: Any) -> str:
    """An event as `events.publish` sends it, for the Lua scripts that publish it in the same round trip
    as the change it reports."""
    return json.dumps({"event": event, "jobId": job_id, "at": iso_ms(utcnow()), **data}, separators=(",", ":"))


async def begin(
    rt: Runtime,
    *,
    job: Job,
    token: str,
    triggered_by: str,
    fire_at: datetime | None,
    attempt: int,
    announce: bool = True,
) -> Run | None:
    """Write the run record as the handler starts; None when this token or fire already has one.

    `announce=False` leaves the `run.started` event (`started_event`) to the caller, which publishes it
    together with other work while the handler already runs."""
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
    if announce:
        await events.publish(rt.redis, "run.started", job.id, running=True, runId=run.id, triggeredBy=triggered_by)
    return run


def started_event(run: Run) -> str:
    return event_json("run.started", run.job_id, running=True, runId=run.id, triggeredBy=run.triggered_by)


async def record_dropped(rt: Runtime, *, job_id: str, token: str, triggered_by: str, run: Run | None = None) -> bool:
    """A trigger whose lease lapsed before any worker took it: say so in the logs rather than vanish.

    `run`: the record a worker wrote while it checked the lease (in parallel), closed the same way.
    False when the run was recorded already (nothing written)."""
    wait = rt.settings.queued_lease_ttl_seconds
    log.warning("run %s of %s dropped: no worker took it within %s s", token, job_id, wait)
    now = rt.now()
    details = f"not started: no worker took it within {wait:g} s"
    if run is not None:
        closed = await Run.filter(id=run.id, completed_at__isnull=True).update(
            started_at=now, completed_at=now, duration_ms=0, result=ERROR, details=details
        )
        if not closed:
            return False
    else:
        try:
            await Run.create(
                job_id=job_id,
                token=token,
                triggered_by=triggered_by,
                started_at=now,
                completed_at=now,
                duration_ms=0,
                result=ERROR,
                details=details,
            )
        except IntegrityError:
            return False  # recorded already (a redelivery)
    metrics.run_finished(job_id, ERROR, 0)
    await events.publish(rt.redis, "run.finished", job_id, running=False, result=ERROR)
    return True


async def complete(rt: Runtime, *, run: Run, result: str, details: str) -> bool:
    """Close the run and the job's last-run fields, then release the lease. False if it was already closed.

    Runs that finish at the same moment (a burst of scheduled fires) are closed together: one transaction,
    one Lua call for their leases, one pipeline for their events (app.groupcommit). Each keeps its own
    fenced update, so the outcome is the same as closing them one by one."""
    done_at = rt.now()
    # The columns are 32-bit on PostgreSQL (24.8 days of ms): a run reaped long after its worker died
    # (a service down for a month) must still close, not fail on every reaper pass.
    duration = min(MAX_DURATION_MS, max(0, int((done_at - run.started_at).total_seconds() * 1000)))
    return await _completions().submit(_Completion(rt, run, result, details, done_at, duration))


@dataclass(frozen=True, slots=True)
class _Completion:
    rt: Runtime
    run: Run
    result: str
    details: str
    done_at: datetime
    duration: int


async def _complete_many(batch: list[_Completion]) -> list[bool]:
    closed = [False] * len(batch)
    run_sql, job_sql = _COMPLETE_SQL[connections.get("default").capabilities.dialect == "postgres"]
    async with in_transaction() as conn:
        # In job id order, as every batch that updates job rows: concurrent batches never deadlock on PostgreSQL.
        # Plain SQL: building these UPDATEs through the ORM cost more CPU than the rest of a completion.
        for i in sorted(range(len(batch)), key=lambda i: (batch[i].run.job_id, batch[i].run.id)):
            c = batch[i]
            run = c.run
            n, _ = await conn.execute_query(run_sql, [c.done_at, c.duration, c.result, c.details, run.id, run.attempt])
            if n:
                # A slower, older run must not overwrite the outcome of a newer one.
                await conn.execute_query(job_sql, [run.started_at, c.result, c.duration, run.job_id, run.started_at])
            closed[i] = bool(n)
    rt = batch[0].rt
    try:
        await lease.release_many(rt.redis, [(c.run.job_id, c.run.token) for c in batch])
    except RedisError:
        log.warning("could not release the leases of %d runs; they expire by themselves", len(batch))
    finished: list[tuple[str, str, dict[str, object]]] = []
    for c, ok in zip(batch, closed, strict=True):
        if ok:
            metrics.run_finished(c.run.job_id, c.result, c.duration)
            data: dict[str, object] = {
                "running": False,
                "runId": c.run.id,
                "startedAt": iso_ms(c.run.started_at),  # the job's lastRun as of this event (app.api.live)
                "result": c.result,
                "duration": c.duration,
                "details": c.details,
            }
            finished.append(("run.finished", c.run.job_id, data))
    await publish_all(rt, finished)
    return closed


def _marks(postgres: bool, count: int) -> list[str]:
    return [f"${i}" for i in range(1, count + 1)] if postgres else ["?"] * count


_COMPLETE_SQL = {
    postgres: (
        "UPDATE job_run SET completed_at = {}, duration_ms = {}, result = {}, details = {} "
        "WHERE id = {} AND completed_at IS NULL AND attempt = {}".format(*_marks(postgres, 6)),
        "UPDATE job SET last_run_at = {}, last_result = {}, last_duration_ms = {} "
        "WHERE id = {} AND (last_run_at IS NULL OR last_run_at <= {})".format(*_marks(postgres, 5)),
    )
    for postgres in (False, True)
}
_completions = per_loop(lambda: GroupCommit(_complete_many, "complete"))


SCHEDULER = "scheduler"
FIRE_SKIPPED = "fire.skipped"
# Rows per INSERT: 6 parameters each stays far below SQLite's and PostgreSQL's parameter limits.
BEGIN_BATCH = 500


async def begin_fires(rt: Runtime, fires: Sequence[tuple[Job, str, datetime, int]]) -> list[Run | None]:
    """`begin` for the scheduled fires (job, lease token, fire time, attempt) starting on the same instant:
    their run records in one statement, their `run.started` events in one round trip. None for a fire that
    already has its run record (a redelivery): never two runs of one fire."""
    started_at = rt.now()
    ids: dict[tuple[str, str], int] = {}
    for start in range(0, len(fires), BEGIN_BATCH):
        ids.update(await _insert_runs(fires[start : start + BEGIN_BATCH], started_at))
    runs: list[Run | None] = []
    for job, token, fire_at, attempt in fires:
        run_id = ids.get((job.id, token))
        if run_id is None:
            runs.append(None)
            continue
        run = Run(
            id=run_id,
            job_id=job.id,
            token=token,
            attempt=attempt,
            triggered_by=SCHEDULER,
            fire_at=fire_at,
            started_at=started_at,
        )
        run._saved_in_db = True
        runs.append(run)
    await publish_all(
        rt,
        [
            ("run.started", r.job_id, {"running": True, "runId": r.id, "triggeredBy": SCHEDULER})
            for r in runs
            if r is not None
        ],
    )
    return runs


async def _insert_runs(
    fires: Sequence[tuple[Job, str, datetime, int]], started_at: datetime
) -> dict[tuple[str, str], int]:
    """INSERT ... ON CONFLICT DO NOTHING RETURNING (SQLite has RETURNING since 3.35): the rows that were
    written, by (job id, token). A conflict on (job_id, fire_at) is a fire that already ran."""
    conn = connections.get("default")
    postgres = conn.capabilities.dialect == "postgres"
    rows: list[str] = []
    values: list[object] = []
    # In (job, fire) order: two batches that overlap (a redelivered fire) take their index locks alike.
    for job, token, fire_at, attempt in sorted(fires, key=lambda f: (f[0].id, f[2])):
        first = len(values) + 1
        rows.append("(" + ", ".join(f"${first + i}" if postgres else "?" for i in range(6)) + ")")
        values += [job.id, token, attempt, SCHEDULER, fire_at, started_at]
    sql = (
        "INSERT INTO job_run (job_id, token, attempt, triggered_by, fire_at, started_at) "
        f"VALUES {', '.join(rows)} ON CONFLICT DO NOTHING RETURNING id, job_id, token"
    )
    written = await conn.execute_query_dict(sql, values)
    return {(str(r["job_id"]), str(r["token"])): int(r["id"]) for r in written}


async def publish_all(rt: Runtime, messages: Sequence[tuple[str, str, dict[str, object]]]) -> None:
    """events.publish for many (event, job id, data) in one round trip, in order. Best effort, like it."""
    if not messages:
        return
    at = iso_ms(utcnow())
    try:
        async with rt.redis.pipeline(transaction=False) as pipe:
            for event, job_id, data in messages:
                pipe.publish(
                    events.CHANNEL,
                    json.dumps({"event": event, "jobId": job_id, "at": at, **data}, separators=(",", ":")),
                )
            await pipe.execute()
    except RedisError:
        log.warning("could not publish %d events", len(messages), exc_info=True)
        return
    for event, _, _ in messages:
        metrics.event_published(event)


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
