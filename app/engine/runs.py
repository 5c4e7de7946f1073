"""Run records: written when a run starts, closed exactly once (by its runner, or by a reaper when its worker is
lost), and the triggers that never started recorded too.

Every write to a run is fenced: it only applies while the run is still open (`completed_at IS NULL`) and, for
completion, only by the attempt that owns the run. A stale writer changes nothing.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from redis.exceptions import RedisError
from tortoise import connections
from tortoise.exceptions import IntegrityError
from tortoise.transactions import in_transaction

from app.adapters import arq as arq_protocol
from app.adapters.tortoise.rows import loaded
from app.data.runs import Run
from app.engine import events, leases, scheduler
from app.engine.groupcommit import GroupCommit, per_loop
from app.platform import metrics
from app.platform.runtime import Runtime
from app.platform.timefmt import iso_ms

log = logging.getLogger(__name__)

SUCCESS, ERROR = "success", "error"
SCHEDULER = "scheduler"  # triggered_by of scheduled fires
WORKER_LOST = "worker lost"
WORKER_SHUT_DOWN = "worker shut down"
# The duration columns are 32-bit on PostgreSQL (24.8 days of ms): a run reaped long after its worker died (a
# service down for a month) must still close, not fail on every reaper pass.
MAX_DURATION_MS = 2**31 - 1
# Rows per INSERT: 6 parameters each stays far below SQLite's and PostgreSQL's parameter limits.
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
        placeholders.append("(" + ", ".join(f"${first + i}" if postgres else "?" for i in range(6)) + ")")
        values += [row.job_id, row.token, row.attempt, row.triggered_by, row.fire_at, started_at]
    sql = (
        "INSERT INTO job_run (job_id, token, attempt, triggered_by, fire_at, started_at) "
        f"VALUES {', '.join(placeholders)} ON CONFLICT DO NOTHING RETURNING id, token"
    )
    written = await conn.execute_query_dict(sql, values)
    return {str(r["token"]): int(r["id"]) for r in written}


async def record_dropped(rt: Runtime, *, job_id: str, token: str, triggered_by: str) -> bool:
    """A trigger whose lease lapsed before any worker took it: say so in the logs rather than vanish.
    False when the trigger has a run record already (nothing written)."""
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
        return False  # recorded already (a redelivery)
    metrics.run_finished(job_id, ERROR, 0)
    await events.publish(rt.redis, events.RUN_FINISHED, job_id, running=False, result=ERROR)
    return True


async def complete(rt: Runtime, *, run: Run, result: str, details: str) -> bool:
    """Close the run and the job's last-run fields, then release the lease. False if it was already closed.

    Runs that finish at the same moment (a burst of scheduled fires) are closed together: one transaction,
    one Lua call for their leases, one pipeline for their events (app.engine.groupcommit). Each keeps its own
    fenced update, so the outcome is the same as closing them one by one."""
    done_at = rt.now()
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
        await leases.release_many(rt.redis, [(c.run.job_id, c.run.token) for c in batch])
    except RedisError:
        log.warning("could not release the leases of %d runs; they expire by themselves", len(batch))
    finished: list[events.Event] = []
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
            finished.append((events.RUN_FINISHED, c.run.job_id, data))
    await events.publish_all(rt.redis, finished)
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
        if run.fire_at is not None:
            # arq must never re-run it, and its leftovers must not clog the queue.
            await arq_protocol.forget(rt.redis, rt.redis.default_queue_name, scheduler.fire_id(run.job_id, run.fire_at))
    return Reaped(closed, max(0.0, next_pass))
