"""Jobs: lookup, listing, enable/disable (start/stop) and built-in registration."""

from __future__ import annotations

import copy
import dataclasses
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from tortoise.exceptions import IntegrityError
from tortoise.transactions import in_transaction

from app import engine
from app.activity import service as activity_service
from app.data import jobs as jobs_table
from app.data.jobs import Job, validate_job_id
from app.job_types import registry
from app.jobs.builtin import BUILTIN_JOBS
from app.jobs.inputs import JobCreate, parse_job_create
from app.platform import metrics
from app.platform.errors import Conflict, Invalid
from app.platform.runtime import Runtime
from app.platform.schedule import FORMS, ScheduleError, interval_to_schedule, validate_schedule


@dataclass(frozen=True)
class JobState:
    """A job row plus what only Redis knows: whether a run holds its lease, and whether that run was asked to
    stop and has not yet; and the job's catch-up policy as it applies (its own, or the global default)."""

    job: Job
    running: bool
    cancelling: bool
    catch_up: engine.CatchUp

    @property
    def next_run(self) -> datetime | None:
        """The enqueued fire; a stopped job has none, whatever a racing claim left on the row."""
        return self.job.next_run_at if self.job.enabled else None


def _state(rt: Runtime, job: Job, running: dict[str, bool]) -> JobState:
    cancelling = running.get(job.id)
    return JobState(
        job=job,
        running=cancelling is not None,
        cancelling=bool(cancelling),
        catch_up=engine.catch_up_of(job, rt.settings),
    )


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def as_of_event(state: JobState, event: dict[str, Any]) -> JobState:
    """The state as a run event reports it. The live hub reads a job's state when it handles the event, which
    can be after the next change (the run ended at once, or the next one began): the event's own facts win
    for the fields it carries, so that subscribers are shown every run's start and end, and every skipped fire
    with its reason, in order."""
    kind = event.get("event")
    last_fire, reason = event.get("lastFireAt"), event.get("reason")
    if kind == "fire.skipped" and isinstance(last_fire, str) and isinstance(reason, str):
        job = copy.copy(state.job)  # the read may be shared by other events of the same batch
        job.last_skipped_at, job.last_skip_reason = _instant(last_fire), reason
        return dataclasses.replace(state, job=job)
    running = event.get("running")
    if kind == engine.RUN_CANCELLING or not isinstance(running, bool):
        # A cancel request changes nothing the read missed: the stores say whether the run still goes.
        return state
    started_at = event.get("startedAt")
    job = state.job
    if kind == "run.finished" and isinstance(started_at, str):
        job = copy.copy(job)
        job.last_run_at = _instant(started_at)
        job.last_result = event.get("result")
        job.last_duration_ms = event.get("duration")
    cancelling = running and state.cancelling and kind != "run.started"
    return dataclasses.replace(state, job=job, running=running, cancelling=cancelling)


async def list_jobs(rt: Runtime) -> list[JobState]:
    rows, _ = await jobs_table.all_rows()
    jobs = jobs_table.from_rows(rows)  # copies each row's values: the shared rows stay untouched
    running = await engine.running(rt, [j.id for j in jobs])
    return [_state(rt, j, running) for j in jobs]


Rendered = TypeVar("Rendered")


@dataclass(slots=True)
class _Listing:
    """One `list_rendered` answer and what it was made of."""

    rows: list[dict[str, Any]] | None  # None where they cannot come back (see jobs_table.all_rows)
    running: dict[str, bool]
    # per job id: (the row's values, running: whether it is cancelling, or None, what the render function made)
    by_id: dict[str, tuple[tuple[Any, ...], bool | None, Any]]
    answer: list[Any]


# Per render function, forgotten with it.
_listings: weakref.WeakKeyDictionary[Callable[[JobState], Any], _Listing] = weakref.WeakKeyDictionary()


async def list_rendered(rt: Runtime, render: Callable[[JobState], Rendered]) -> list[Rendered]:
    """Every job as `render` makes it (the list's wire objects, say); `render` must depend on the state only.

    Redis is read on every call, and the database too unless it tells that nothing was committed since the
    previous read (SQLite; see `jobs_table.all_rows`). What is skipped is rebuilding the unchanged: a job whose row
    values and running flag equal those of this process's previous call reuses that call's rendering, and an unchanged
    list its whole answer. Building 20 Job instances and then their JSON objects was a third of a list
    request's CPU (B3), for a list that mostly does not change between two reads. Answers and renderings are
    shared: never mutate one.
    """
    rows, reusable = await jobs_table.all_rows()
    running = await engine.running(rt, [row["id"] for row in rows])
    before = _listings.get(render)
    if before is not None and before.rows is rows and before.running == running:
        return before.answer
    kept: dict[str, tuple[tuple[Any, ...], bool | None, Any]] = {}
    changed: list[dict[str, Any]] = []
    changed_values: list[tuple[Any, ...]] = []
    previous = before.by_id if before is not None else {}
    for row in rows:
        job_id = row["id"]
        values = tuple(row.values())
        entry = previous.get(job_id)
        # Compared by ==, never hashed: a backend may hand back a JSON column as a dict.
        if entry is not None and entry[1] == running.get(job_id) and entry[0] == values:
            kept[job_id] = entry
        else:
            changed.append(row)
            changed_values.append(values)
    # In one pass, as `list_jobs` builds them: a cold or much-changed list costs what it did before.
    for values, job in zip(changed_values, jobs_table.from_rows(changed), strict=True):
        kept[job.id] = (values, running.get(job.id), render(_state(rt, job, running)))
    answer = [kept[row["id"]][2] for row in rows]
    kept_rows = rows if reusable else None  # the rows of 10,000 jobs are megabytes: kept only if they can return
    _listings[render] = _Listing(rows=kept_rows, running=running, by_id=kept, answer=answer)  # gone jobs dropped
    return answer


async def get(rt: Runtime, *, job_id: str) -> JobState:
    state = await find(rt, job_id=job_id)
    if state is None:
        raise jobs_table.not_found(job_id)
    return state


async def find_many(rt: Runtime, job_ids: list[str]) -> dict[str, JobState]:
    """The current states of these jobs by id, in one read of each store; a job that does not exist is absent."""
    if not job_ids:
        return {}
    if len(job_ids) == 1:
        # The common case (one event at a time) through the one-job SQL compiled once per process.
        state = await find(rt, job_id=job_ids[0])
        return {} if state is None else {state.job.id: state}
    jobs = await Job.filter(id__in=job_ids)
    running = await engine.running(rt, [j.id for j in jobs])
    return {j.id: _state(rt, j, running) for j in jobs}


async def find(rt: Runtime, *, job_id: str) -> JobState | None:
    """The job's current state, or None when it does not exist (a live stream ends then)."""
    job = await jobs_table.get_or_none(validate_job_id(job_id))
    if job is None:
        return None
    return _state(rt, job, await engine.running(rt, [job.id]))


async def set_enabled(rt: Runtime, *, job_id: str, enabled: bool, actor: str, event: str = "jobs.update") -> JobState:
    """Enable (schedule the next fire) or disable (remove the pending fire). Idempotent; always audited.
    Enabling starts the count of failed runs in a row (pauseAfterFailures) afresh."""
    job = await jobs_table.get_or_raise(job_id=job_id)
    was_enabled = job.enabled
    changes: dict[str, Any] = {"enabled": enabled}
    if enabled:
        changes["consecutive_failures"] = 0
    async with in_transaction() as conn:
        await Job.filter(id=job.id).using_db(conn).update(**changes)
        await activity_service.record(
            event=event,
            actor=actor,
            job_id=job.id,
            details={"enabled": enabled, "previous": was_enabled},
            using_db=conn,
        )
    job.enabled = enabled
    await engine.schedule(rt, job)
    if was_enabled != enabled:
        await engine.publish(rt, "job.enabled" if enabled else "job.disabled", job.id, enabled=enabled)
    return await get(rt, job_id=job.id)


async def start(rt: Runtime, *, job_id: str, actor: str) -> JobState:
    return await set_enabled(rt, job_id=job_id, enabled=True, actor=actor, event="jobs.start")


async def stop(rt: Runtime, *, job_id: str, actor: str) -> JobState:
    return await set_enabled(rt, job_id=job_id, enabled=False, actor=actor, event="jobs.stop")


def _schedule_of(spec: JobCreate, default_tz: str, now: datetime) -> str:
    """Exactly one of `interval` (a Go duration) or `schedule`; `interval: "24h"` becomes `@every 24h`."""
    if (spec.interval is None) == (spec.schedule is None):
        raise Invalid(f"Give exactly one of interval (a Go duration such as 90s, 5m, 1h30m, 24h) or schedule ({FORMS})")
    tz = spec.timezone or default_tz
    try:
        validate_schedule("@daily", tz)
    except ScheduleError as exc:
        raise Invalid(f"Invalid timezone: {exc}", code="invalid_timezone") from exc
    try:
        expression = interval_to_schedule(spec.interval) if spec.interval is not None else spec.schedule or ""
        schedule = validate_schedule(expression, tz)
        schedule.next_after(now)  # a schedule that cannot give its next fire is refused here, not at fire time
        return schedule.expression
    except (ScheduleError, OverflowError) as exc:
        field = "interval" if spec.interval is not None else "schedule"
        raise Invalid(f"Invalid {field}: {exc}", code=f"invalid_{field}") from exc


async def create(rt: Runtime, *, data: object, actor: str) -> JobState:
    """Create a job of a registered type and schedule its first fire."""
    spec = parse_job_create(data)
    validate_job_id(spec.id)
    job_type = registry.get(spec.type)
    payload = registry.validate_payload(job_type, spec.payload, rt.settings)
    schedule = _schedule_of(spec, rt.settings.scheduler_timezone, rt.now())
    retry = spec.retry.policy() if spec.retry is not None else None
    try:
        async with in_transaction() as conn:
            job = await Job.create(
                id=spec.id,
                name=spec.name,
                description=spec.description,
                type=spec.type,
                payload=payload,
                schedule=schedule,
                timezone=spec.timezone,
                timeout_seconds=spec.timeout,
                enabled=spec.enabled,
                retry=retry.to_row() if retry is not None else None,
                overlap=spec.overlap,
                catch_up_window_seconds=spec.catch_up.window_seconds() if spec.catch_up is not None else None,
                catch_up_policy=spec.catch_up.policy if spec.catch_up is not None else engine.LATEST,
                pause_after_failures=spec.pause_after_failures,
                using_db=conn,
            )
            details = {"type": spec.type, "schedule": schedule, "enabled": spec.enabled}
            await activity_service.record(
                event="jobs.create", actor=actor, job_id=job.id, details=details, using_db=conn
            )
    except IntegrityError as exc:
        raise Conflict(f"Job '{spec.id}' already exists", code="job_exists") from exc
    await engine.schedule(rt, job)
    await engine.publish(rt, "job.created", job.id, enabled=job.enabled)
    return await get(rt, job_id=job.id)


async def delete(rt: Runtime, *, job_id: str, actor: str) -> None:
    """Delete a job and its pending fire; its past runs stay in the logs.

    Refused for built-in jobs, and while the job runs: deleting a running job would orphan a run
    whose outcome nobody could act on, so the caller stops it and deletes once the run has finished.
    """
    job = await jobs_table.get_or_raise(job_id=job_id)
    if job.builtin:
        raise Conflict(f"Job '{job.id}' is built in and cannot be deleted; stop it instead", code="builtin_job")
    if await engine.running(rt, [job.id]):
        raise Conflict("Job is running; delete it once the run has finished", code="already_running")
    async with in_transaction() as conn:
        await Job.filter(id=job.id).using_db(conn).delete()
        details = {"type": job.type, "schedule": job.schedule}
        await activity_service.record(event="jobs.delete", actor=actor, job_id=job.id, details=details, using_db=conn)
    await engine.unschedule(rt, job)
    metrics.job_deleted(job.id)
    await engine.publish(rt, engine.JOB_DELETED, job.id)


async def register_builtin_jobs() -> None:
    """Insert the built-in jobs that are missing. Never touches an existing row, so a persisted
    `enabled: false` survives restarts; safe when several processes start at once."""
    for spec in BUILTIN_JOBS:
        if await Job.exists(id=spec.id):
            continue
        try:
            await Job.create(
                id=spec.id,
                name=spec.name,
                description=spec.description,
                type=spec.type,
                schedule=spec.schedule,
                builtin=True,
                enabled=True,
            )
        except IntegrityError:
            pass  # another process inserted it first
