"""Run records: written when a run starts, closed exactly once (by its runner, or by a reaper when its worker is
lost), and the triggers that never started recorded too.

Every write to a run is fenced: it only applies while the run is still open (`completed_at IS NULL`). A stale
writer changes nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import random
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from redis.exceptions import RedisError
from tortoise import connections
from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.exceptions import IntegrityError
from tortoise.expressions import F
from tortoise.transactions import in_transaction

from app.adapters import arq as arq_protocol
from app.adapters.tortoise.rows import loaded
from app.data.activity import Activity
from app.data.jobs import Job
from app.data.runs import Run
from app.engine import events, later, leases, runlog, scheduler
from app.engine.groupcommit import GroupCommit, per_loop
from app.engine.later import Later
from app.engine.policy import Retry
from app.platform import metrics
from app.platform.runtime import Runtime
from app.platform.timefmt import iso_ms

log = logging.getLogger(__name__)

SUCCESS, ERROR = "success", "error"
SCHEDULER = "scheduler"  # triggered_by of scheduled fires
WORKER_LOST = "worker lost"
WORKER_SHUT_DOWN = "worker shut down"
CANCELLED_BY = "cancelled by "  # a cancelled run's details: `cancelled by user:<sub>`, or by policy
AUTO_PAUSE = "jobs.auto_pause"  # the activity entry of a job that paused itself (its event says reason auto_pause)
SYSTEM = "system"  # the actor of what the engine does on its own
# The duration columns are 32-bit on PostgreSQL (24.8 days of ms): a run reaped long after its worker died (a
# service down for a month) must still close, not fail on every reaper pass.
MAX_DURATION_MS = 2**31 - 1
# Rows per INSERT: 7 parameters each stays far below SQLite's and PostgreSQL's parameter limits.
INSERT_BATCH = 500


def new_token() -> str:
    return secrets.token_hex(16)


@dataclass(frozen=True, slots=True)
class NewRun:
    """A run record about to be written."""

    job_id: str
    token: str
    triggered_by: str
    fire_at: datetime | None
    attempt: int = 1
    payload: dict[str, Any] | None = None


async def insert(rows: Sequence[NewRun], started_at: datetime) -> list[Run | None]:
    """Write the run records, in as few statements as their number allows; None for a row that was not written
    because its token, or its (job, fire), already has a record: never two runs of one trigger or one fire."""
    ids: dict[str, int] = {}
    for start in range(0, len(rows), INSERT_BATCH):
        ids.update(await _insert_batch(rows[start : start + INSERT_BATCH], started_at))
    return [
        None
        if (run_id := ids.get(row.token)) is None
        else loaded(
            Run,
            id=run_id,
            job_id=row.job_id,
            token=row.token,
            attempt=row.attempt,
            triggered_by=row.triggered_by,
            fire_at=row.fire_at,
            started_at=started_at,
            payload=row.payload,
        )
        for row in rows
    ]


async def _insert_batch(rows: Sequence[NewRun], started_at: datetime) -> dict[str, int]:
    """INSERT ... ON CONFLICT DO NOTHING RETURNING (SQLite has RETURNING since 3.35): the ids written, by token."""
    conn = connections.get("default")
    postgres = conn.capabilities.dialect == "postgres"
    placeholders: list[str] = []
    values: list[object] = []
    # In (job, fire) order: two batches that overlap (a redelivered fire) take their index locks alike.
    for row in sorted(rows, key=lambda r: (r.job_id, r.fire_at is not None, r.fire_at or started_at)):
        first = len(values) + 1
        placeholders.append("(" + ", ".join(f"${first + i}" if postgres else "?" for i in range(7)) + ")")
        payload = None if row.payload is None else json.dumps(row.payload, separators=(",", ":"))
        values += [row.job_id, row.token, row.attempt, row.triggered_by, row.fire_at, started_at, payload]
    sql = (
        "INSERT INTO job_run (job_id, token, attempt, triggered_by, fire_at, started_at, payload) "
        f"VALUES {', '.join(placeholders)} ON CONFLICT DO NOTHING RETURNING id, token"
    )
    written = await conn.execute_query_dict(sql, values)
    return {str(r["token"]): int(r["id"]) for r in written}


async def record_dropped(rt: Runtime, *, job_id: str, token: str, triggered_by: str) -> bool:
    """A trigger whose lease lapsed before any worker took it: say so in the logs rather than vanish.
    False when the trigger has a run record already (nothing written)."""
    wait = rt.settings.queued_lease_ttl_seconds
    log.warning("run %s of %s dropped: no worker took it within %s s", token, job_id, wait)
    details = f"not started: no worker took it within {wait:g} s"
    return await record_not_started(rt, job_id=job_id, token=token, triggered_by=triggered_by, details=details)


async def record_not_started(
    rt: Runtime,
    *,
    job_id: str,
    token: str,
    triggered_by: str,
    details: str,
    fire_at: datetime | None = None,
    attempt: int = 1,
) -> bool:
    """A run that ends before it started (a trigger dropped or cancelled while queued, a retry cancelled in its
    backoff): recorded as `error` with `details`, its lease released if it still holds it. False when the token
    has a run record already (nothing written)."""
    now = rt.now()
    try:
        await Run.create(
            job_id=job_id,
            token=token,
            attempt=attempt,
            triggered_by=triggered_by,
            fire_at=fire_at,
            started_at=now,
            completed_at=now,
            duration_ms=0,
            result=ERROR,
            details=details,
        )
    except IntegrityError:
        return False  # recorded already (a redelivery)
    metrics.run_finished(job_id, ERROR, 0)
    try:
        finished = await _hand_on(rt, [leases.Finish(job_id, token)], [None])
    except RedisError:
        log.warning("could not release the lease of %s's run %s; it expires by itself", job_id, token)
        finished = [leases.Finished()]
    running = finished[0].buffered_fire is not None
    await events.publish(rt.redis, events.RUN_FINISHED, job_id, running=running, result=ERROR, details=details)
    return True


async def release(rt: Runtime, job_id: str, token: str) -> None:
    """Give up a lease held for a start that will not run (no run record): released, or handed to a fire buffered
    behind it."""
    try:
        await _hand_on(rt, [leases.Finish(job_id, token)], [None])
    except RedisError:
        log.warning("could not release the lease of %s's start %s; it expires by itself", job_id, token)


def is_cancel(details: str) -> bool:
    return details.startswith(CANCELLED_BY)


async def complete(
    rt: Runtime,
    *,
    run: Run,
    result: str,
    details: str,
    final: bool = False,
    output: dict[str, Any] | None = None,
    error_type: str | None = None,
    traceback: str | None = None,
) -> bool:
    """Close the run and the job's last-run fields, then hand its lease on. False if it was already closed.

    A failed run (`error`) is retried when the job's retry policy allows another attempt, unless `final` (it was
    cancelled) or a cancel was asked for it: the next attempt is queued for after its backoff (app.engine.later)
    and takes the lease over, so that the job stays running. A failed run that is not retried counts towards the
    job's pauseAfterFailures; a success resets the count. With no next attempt the lease is released, and a fire
    buffered behind the run (overlap buffer_one) takes it at once. `output`, `error_type` and `traceback` are
    written with the outcome, in the same statement (app.engine.outcomes).

    Runs that finish at the same moment (a burst of scheduled fires) are closed together: one transaction,
    one Lua call for their leases, one pipeline for their events (app.engine.groupcommit). Each keeps its own
    fenced update, so the outcome is the same as closing them one by one."""
    done_at = rt.now()
    duration = min(MAX_DURATION_MS, max(0, int((done_at - run.started_at).total_seconds() * 1000)))
    said = _Said(output, error_type, traceback)
    return await _completions().submit(_Completion(rt, run, result, details, done_at, duration, final, said))


@dataclass(frozen=True, slots=True)
class _Said:
    output: dict[str, Any] | None
    error_type: str | None
    traceback: str | None


@dataclass(slots=True)
class _Completion:
    rt: Runtime
    run: Run
    result: str
    details: str
    done_at: datetime
    duration: int
    final: bool
    said: _Said
    following: Later | None = None  # its next attempt, when the retry policy allows one
    paused: int = 0  # > 0: this failure paused the job, after this many failed runs in a row


async def _complete_many(batch: list[_Completion]) -> list[bool]:
    closed = await _close(batch)
    rt = batch[0].rt
    # Only the runs this batch closed hand their lease on: a run someone else closed first (a reaper, another
    # reaper) is theirs to hand on, and a second hand-over could give a buffered fire the lease meant for a retry.
    mine = [c for c, ok in zip(batch, closed, strict=True) if ok]
    try:
        handed = await _hand_on(
            rt, [leases.Finish(c.run.job_id, c.run.token) for c in mine], [c.following for c in mine]
        )
    except RedisError:
        log.warning("could not release the leases of %d runs; they expire by themselves", len(mine))
        handed = [leases.Finished() for _ in mine]
    by_run = dict(zip([id(c) for c in mine], handed, strict=True))
    finished = [by_run.get(id(c), leases.Finished()) for c in batch]
    unretried: list[_Completion] = []
    for c, f in zip(batch, finished, strict=True):
        if c.following is None:
            continue
        if f.retry:
            metrics.retried(c.run.job_id)
        elif not f.cancelled:
            # The next attempt could not take the lease over (another run holds it by now): the run ends its chain
            # after all, as a failure.
            unretried.append(c)
    if unretried:
        await _count_failures(unretried)
    # A run's log followers learn here that its log is complete (app.engine.runlog: closed before the run).
    ends = [(runlog.LOG_CHANNEL, runlog.end_message(c.run.id)) for c, ok in zip(batch, closed, strict=True) if ok]
    await events.publish_all(rt.redis, _finished_events(batch, closed, finished), also=ends)
    await _paused(rt, [c for c in batch if c.paused])
    return closed


async def _close(batch: list[_Completion]) -> list[bool]:
    """The batch's fenced updates, in one transaction; plans each failed run's next attempt, or counts it."""
    closed = [False] * len(batch)
    postgres = connections.get("default").capabilities.dialect == "postgres"
    run_sql, job_sql, job_ok_sql = _COMPLETE_SQL[postgres]
    failing = sorted({c.run.job_id for c in batch if c.result != SUCCESS and not c.final})
    async with in_transaction() as conn:
        retries = await _retry_policies(conn, failing) if failing else {}
        # In job id order, as every batch that updates job rows: concurrent batches never deadlock on PostgreSQL.
        # Plain SQL: building these UPDATEs through the ORM cost more CPU than the rest of a completion.
        for i in sorted(range(len(batch)), key=lambda i: (batch[i].run.job_id, batch[i].run.id)):
            c = batch[i]
            run = c.run
            said = c.said
            output = None if said.output is None else json.dumps(said.output, separators=(",", ":"))
            values = [c.done_at, c.duration, c.result, c.details, output, said.error_type, said.traceback, run.id]
            n, _ = await conn.execute_query(run_sql, values)
            closed[i] = bool(n)
            if not n:
                continue
            # A slower, older run must not overwrite the outcome of a newer one.
            sql = job_ok_sql if c.result == SUCCESS else job_sql
            await conn.execute_query(sql, [run.started_at, c.result, c.duration, run.job_id, run.started_at])
            if c.result == SUCCESS or c.final:
                continue
            retry = retries.get(run.job_id)
            if retry is not None and retry.allows_after(run.attempt):
                c.following = _next_attempt(c, retry)
            else:
                c.paused = await _count_failure(conn, run)
    return closed


def _finished_events(
    batch: list[_Completion], closed: list[bool], finished: list[leases.Finished]
) -> list[events.Event]:
    announced: list[events.Event] = []
    for c, f, ok in zip(batch, finished, closed, strict=True):
        if not ok:
            continue
        metrics.run_finished(c.run.job_id, c.result, c.duration)
        data: dict[str, object] = {
            # Still running when its next attempt, or a fire buffered behind it, holds the lease now.
            "running": f.retry or f.buffered_fire is not None,
            "runId": c.run.id,
            "startedAt": iso_ms(c.run.started_at),  # the job's lastRun as of this event (app.api.live)
            "result": c.result,
            "duration": c.duration,
            "details": c.details,
            "attempt": c.run.attempt,
        }
        if f.retry and c.following is not None and c.following.due is not None:
            data["nextAttemptAt"] = iso_ms(c.following.due)
        announced.append((events.RUN_FINISHED, c.run.job_id, data))
    return announced


async def _hand_on(rt: Runtime, endings: list[leases.Finish], following: list[Later | None]) -> list[leases.Finished]:
    """The leases of runs that end: each to its next attempt, or released (and then to a fire buffered behind it);
    the next attempts and buffered fires that took a lease are queued to start."""
    ttl = rt.settings.queued_lease_ttl_seconds
    now = rt.now()
    asked = []
    for end, nxt in zip(endings, following, strict=True):
        wait = (nxt.due - now).total_seconds() if nxt is not None and nxt.due is not None else 0.0
        asked.append(
            leases.Finish(
                end.job_id,
                end.token,
                following=nxt.token if nxt is not None else None,
                following_ttl=max(0.0, wait) + ttl,
                buffered_token=new_token(),
                buffered_ttl=ttl,
            )
        )
    finished = await leases.finish(rt.redis, asked)
    queued: list[Later] = []
    for end, nxt, f in zip(asked, following, finished, strict=True):
        if f.retry and nxt is not None:
            queued.append(nxt)
        if f.buffered_fire is not None:
            fire_at = datetime.fromisoformat(f.buffered_fire)
            queued.append(Later(end.job_id, end.buffered_token, SCHEDULER, fire_at, 1, due=now))
            log.info("fire %s of %s starts now, buffered behind the run that ended", f.buffered_fire, end.job_id)
    try:
        await later.enqueue(rt.redis, queued)
    except RedisError:
        log.error("could not queue %d retries and buffered fires; they are lost", len(queued), exc_info=True)
        # Not queued, so not retried: the job must not stay `running` for a backoff. Their leases are released
        # (best effort: else they lapse within QUEUED_LEASE_TTL_SECONDS plus the backoff), and a retry that
        # will not happen ends its run's chain as a failure (the caller counts it).
        with contextlib.suppress(RedisError):
            await leases.finish(rt.redis, [leases.Finish(start.job_id, start.token) for start in queued])
        finished = [dataclasses.replace(f, retry=False, buffered_fire=None) for f in finished]
    return finished


def _next_attempt(c: _Completion, retry: Retry) -> Later:
    delay = retry.delay(c.run.attempt, random.random())
    log.info(
        "run %s of %s failed (attempt %d of %d); retrying in %.3f s",
        c.run.id,
        c.run.job_id,
        c.run.attempt,
        retry.max_attempts,
        delay,
    )
    run = c.run
    return Later(
        run.job_id,
        new_token(),
        run.triggered_by,
        run.fire_at,
        run.attempt + 1,
        due=c.done_at + timedelta(seconds=delay),
        payload=run.payload,
    )


async def _retry_policies(conn: BaseDBAsyncClient, job_ids: list[str]) -> dict[str, Retry | None]:
    rows = await Job.filter(id__in=job_ids).using_db(conn).values_list("id", "retry")
    return {str(job_id): Retry.from_row(row) for job_id, row in rows}


async def _count_failure(conn: BaseDBAsyncClient, run: Run) -> int:
    """One more failed run in a row for the job; when that reaches its pauseAfterFailures, the job is disabled,
    with an activity entry by `system`. How many failures in a row paused it (0: not paused)."""
    await Job.filter(id=run.job_id).using_db(conn).update(consecutive_failures=F("consecutive_failures") + 1)
    row = (
        await Job.filter(id=run.job_id)
        .using_db(conn)
        .first()
        .values("enabled", "consecutive_failures", "pause_after_failures")
    )
    if not row or not row["enabled"] or row["pause_after_failures"] is None:
        return 0
    failures, limit = int(row["consecutive_failures"]), int(row["pause_after_failures"])
    if failures < limit:
        return 0
    if not await Job.filter(id=run.job_id, enabled=True).using_db(conn).update(enabled=False, version=F("version") + 1):
        return 0
    details = {
        "enabled": False,
        "previous": True,
        "consecutiveFailures": failures,
        "pauseAfterFailures": limit,
        "runId": run.id,
        "changes": {"enabled": [True, False]},
    }
    await Activity.create(event=AUTO_PAUSE, actor=SYSTEM, job_id=run.job_id, details=details, using_db=conn)
    return failures


async def _count_failures(batch: list[_Completion]) -> None:
    try:
        async with in_transaction() as conn:
            for c in sorted(batch, key=lambda c: (c.run.job_id, c.run.id)):
                c.paused = await _count_failure(conn, c.run)
    except Exception:
        log.exception("could not count the failures of %d runs", len(batch))


async def _paused(rt: Runtime, batch: list[_Completion]) -> None:
    """Jobs that paused themselves: their pending fire goes, and subscribers are told why."""
    for c in batch:
        job_id = c.run.job_id
        log.warning("job %s paused itself after %d failed runs in a row (pauseAfterFailures)", job_id, c.paused)
        metrics.auto_paused(job_id)
        try:
            job = await Job.get_or_none(id=job_id)
            if job is not None:
                await scheduler.reconcile_job(rt, job)
        except Exception:
            log.warning("could not remove the pending fire of paused job %s; the reconcile will", job_id, exc_info=True)
        await events.publish(rt.redis, events.JOB_DISABLED, job_id, enabled=False, reason="auto_pause")


def _marks(postgres: bool, count: int) -> list[str]:
    return [f"${i}" for i in range(1, count + 1)] if postgres else ["?"] * count


_JOB_LAST_RUN = (
    "UPDATE job SET last_run_at = {}, last_result = {}, last_duration_ms = {}{} "
    "WHERE id = {} AND (last_run_at IS NULL OR last_run_at <= {})"
)
_COMPLETE_SQL = {
    postgres: (
        "UPDATE job_run SET completed_at = {}, duration_ms = {}, result = {}, details = {}, output = {}, "
        "error_type = {}, traceback = {} WHERE id = {} AND completed_at IS NULL".format(*_marks(postgres, 8)),
        _JOB_LAST_RUN.format(*_marks(postgres, 3), "", *_marks(postgres, 5)[3:]),
        # A success ends any run of failures (pauseAfterFailures counts failures in a row).
        _JOB_LAST_RUN.format(*_marks(postgres, 3), ", consecutive_failures = 0", *_marks(postgres, 5)[3:]),
    )
    for postgres in (False, True)
}
_completions = per_loop(lambda: GroupCommit(_complete_many, "complete"))

# Open runs looked at per reaper pass (oldest first); more wait for the next pass.
REAP_BATCH = 500
# After a lease's expiry, how long the reaper waits before looking: Redis expires keys lazily, within a few ms.
EXPIRY_MARGIN_SECONDS = 0.05


@dataclass(frozen=True, slots=True)
class Reaped:
    closed: int  # runs this pass closed as lost
    next_pass: float  # seconds until the next pass is worth making


async def reap_lost(rt: Runtime) -> Reaped:
    """Close open runs whose lease has lapsed (their worker is gone) as `error` / `worker lost`. Safe to run
    anywhere, any number of times. The next pass is worth making at the latest HEARTBEAT_SECONDS from now, sooner
    when a lease it saw held expires before that (its worker may be gone)."""
    next_pass = rt.settings.heartbeat_seconds
    now = rt.now().timestamp()
    open_runs = await Run.filter(completed_at__isnull=True).order_by("id").limit(REAP_BATCH)
    closed = 0
    if not open_runs:
        return Reaped(closed, next_pass)
    held = await leases.holders_and_ttls(rt.redis, sorted({r.job_id for r in open_runs}))
    for run in open_runs:
        token, ttl_ms = held.get(run.job_id, (None, -2))
        if token == run.token:
            # Held: watched, so that once it expires without a renewal the run is closed right away.
            if ttl_ms >= 0:
                next_pass = min(next_pass, ttl_ms / 1000 + EXPIRY_MARGIN_SECONDS)
            continue
        # A run younger than a heartbeat may be in its lease's first moments (its runner finds it refused and
        # records that itself): looked at again once it is older.
        settles_in = run.started_at.timestamp() + rt.settings.heartbeat_seconds - now
        if settles_in > 0:
            next_pass = min(next_pass, settles_in + EXPIRY_MARGIN_SECONDS)
            continue
        if await complete(rt, run=run, result=ERROR, details=WORKER_LOST):
            log.warning("run %s of %s lost its worker", run.id, run.job_id)
            metrics.lease_lost(run.job_id, "worker_lost")
            closed += 1
        # arq must never re-run it, and its leftovers must not clog the queue: its fire, or its later start.
        queue = rt.redis.default_queue_name
        if run.fire_at is not None:
            await arq_protocol.forget(rt.redis, queue, scheduler.fire_id(run.job_id, run.fire_at))
        await arq_protocol.forget(rt.redis, queue, later.arq_job_id(run.token))
    return Reaped(closed, max(0.0, next_pass))
