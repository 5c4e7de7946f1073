"""Jobs: lookup, listing, enable/disable (start/stop) and built-in registration."""

from __future__ import annotations

import copy
import dataclasses
import weakref
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar

from tortoise.exceptions import IntegrityError
from tortoise.expressions import F
from tortoise.transactions import in_transaction

from app import engine
from app.activity import service as activity_service
from app.data import jobs as jobs_table
from app.data.jobs import Job, validate_job_id
from app.job_types import registry
from app.jobs.builtin import BUILTIN_JOBS
from app.jobs.inputs import (
    DEFAULT_PREVIEW,
    EDITABLE,
    MAX_PREVIEW,
    EnabledEdit,
    JobCreate,
    SchedulePreviewInput,
    creation_input,
    edit_fields,
    merged,
    parse_job_create,
)
from app.platform import metrics
from app.platform.errors import AppError, Conflict, Invalid, PreconditionFailed
from app.platform.pagination import as_int
from app.platform.runtime import Runtime
from app.platform.schedule import FORMS, Schedule, ScheduleError, interval_to_schedule, validate_schedule
from app.platform.validation import validated


@dataclass(frozen=True)
class JobState:
    """A job row plus what only Redis knows: whether a run holds its lease, and whether that run was asked to
    stop and has not yet; and the job's catch-up policy as it applies (its own, or the global default)."""

    job: Job
    running: bool
    cancelling: bool
    catch_up: engine.CatchUp
    progress: dict[str, Any] | None = None  # the running run's progress, as the live event handled reported it

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
    if kind == engine.RUN_PROGRESS:
        # A report that arrives after its run ended (the read says nothing runs) is not shown.
        progress = event.get("progress")
        return dataclasses.replace(state, progress=progress if state.running and isinstance(progress, dict) else None)
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


def is_job_id(job_id: str) -> bool:
    """Whether a job could have this id (the rule of app.data.jobs.validate_job_id)."""
    try:
        validate_job_id(job_id)
    except Invalid:
        return False
    return True


async def find(rt: Runtime, *, job_id: str) -> JobState | None:
    """The job's current state, or None when it does not exist (a live stream ends then)."""
    job = await jobs_table.get_or_none(validate_job_id(job_id))
    if job is None:
        return None
    return _state(rt, job, await engine.running(rt, [job.id]))


async def set_enabled(
    rt: Runtime,
    *,
    job_id: str,
    enabled: bool,
    actor: str,
    event: str = "jobs.update",
    expected_version: Expected = None,
) -> JobState:
    """Enable (schedule the next fire) or disable (remove the pending fire). Idempotent; always audited.
    Enabling starts the count of failed runs in a row (pauseAfterFailures) afresh."""
    job = await jobs_table.get_or_raise(job_id=job_id)
    _check_version(job, expected_version)
    was_enabled = job.enabled
    changes: dict[str, Any] = {"enabled": enabled}
    if enabled:
        changes["consecutive_failures"] = 0
    if was_enabled != enabled:
        changes["version"] = F("version") + 1
    async with in_transaction() as conn:
        query = Job.filter(id=job.id)
        if expected_version is not None:
            query = query.filter(version=job.version)  # the version _check_version found expected
        if not await query.using_db(conn).update(**changes):
            raise await _lost_race(job.id)
        details: dict[str, Any] = {"enabled": enabled, "previous": was_enabled}
        if was_enabled != enabled:
            details["changes"] = {"enabled": [was_enabled, enabled]}
        await activity_service.record(event=event, actor=actor, job_id=job.id, details=details, using_db=conn)
    # The row as it is now (the reschedule's compare-and-set checks its version and next fire).
    job = await jobs_table.get_or_raise(job_id=job.id)
    await engine.schedule(rt, job)
    if was_enabled != enabled:
        await engine.publish(rt, "job.enabled" if enabled else "job.disabled", job.id, enabled=enabled)
    return await get(rt, job_id=job.id)


# The versions a caller expects the job at (one, or any of several: an If-Match list); None: any.
Expected = int | Collection[int] | None


def _check_version(job: Job, expected: Expected) -> None:
    if expected is None:
        return
    if job.version not in ({expected} if isinstance(expected, int) else set(expected)):
        raise _stale(job.id, job.version)


def _stale(job_id: str, current: int) -> PreconditionFailed:
    return PreconditionFailed(
        f"Job '{job_id}' changed since you read it (it is at version {current}); read it again and retry",
        details={"currentVersion": current},
    )


async def _lost_race(job_id: str) -> AppError:
    """Why a compare-and-set on the job's version changed nothing: it was deleted, or changed meanwhile."""
    job = await jobs_table.get_or_none(job_id)
    return jobs_table.not_found(job_id) if job is None else _stale(job_id, job.version)


# Attempts at an edit without `If-Match` that lose the race against a concurrent change: each reads again.
EDIT_ATTEMPTS = 5
# Fields whose change moves the pending fire.
_TIMING = ("schedule", "timezone")


async def update(rt: Runtime, *, job_id: str, data: object, actor: str, expected_version: Expected = None) -> JobState:
    """Change any editable fields of a job (`inputs.EDITABLE`), validated as on creation. The change and its
    audit entry (each field's before and after) commit together, under a compare-and-set on the job's version:
    with `expected_version`, a job changed since gets PreconditionFailed; without, the edit is applied to the
    job as it is now. A new schedule or timezone drops the pending fire and enqueues the new schedule's next
    one. An edit that changes nothing writes nothing."""
    edits = edit_fields(data, builtin=False)
    if set(edits) == {"enabled"}:
        enabled = validated(EnabledEdit, edits, what="job").enabled
        return await set_enabled(rt, job_id=job_id, enabled=enabled, actor=actor, expected_version=expected_version)
    for _ in range(EDIT_ATTEMPTS):
        job = await jobs_table.get_or_raise(job_id=job_id)
        _check_version(job, expected_version)
        edit = _plan_edit(rt, job, edits)
        if not edit.changes:
            return await get(rt, job_id=job.id)
        if await _write_edit(job, edit, actor):
            await _after_edit(rt, job, edit)
            return await get(rt, job_id=job.id)
        if expected_version is not None:
            raise await _lost_race(job.id)
    raise Conflict("The job kept changing while this edit was applied; try again", code="edit_conflict")


@dataclass(frozen=True, slots=True)
class _Edit:
    row: dict[str, Any]  # the columns to write
    changes: dict[str, list[Any]]  # per field that changes (creation body's names): [before, after]
    moves_fire: bool  # the pending fire goes (a new schedule or timezone, enabled or disabled)


def _plan_edit(rt: Runtime, job: Job, edits: dict[str, Any]) -> _Edit:
    edit_fields(edits, builtin=job.builtin)
    before = creation_input(job)
    row = _row_of(rt, merged(before, edits), job, payload_sent="payload" in edits)
    after = {**before, **_wire_of(row)}
    changes = {k: [before[k], after[k]] for k in _WIRE_FIELDS if before[k] != after[k]}
    # Enabled or disabled, or another schedule: the pending fire is dropped and the row's next one enqueued.
    moves = any(k in changes for k in _TIMING) or "enabled" in changes
    if moves:
        row["next_run_at"] = None
    if row["enabled"] and not job.enabled:
        row["consecutive_failures"] = 0
    return _Edit(row, changes, moves)


async def _write_edit(job: Job, edit: _Edit, actor: str) -> bool:
    """The edit and its audit entry in one transaction, if the job is still at the version it was read at."""
    async with in_transaction() as conn:
        query = Job.filter(id=job.id, version=job.version).using_db(conn)
        if not await query.update(**edit.row, version=F("version") + 1):
            return False
        details = {"changes": edit.changes}
        await activity_service.record(event="jobs.update", actor=actor, job_id=job.id, details=details, using_db=conn)
    return True


async def _after_edit(rt: Runtime, job: Job, edit: _Edit) -> None:
    previous_fire = job.next_run_at
    # The row as it is now (the reschedule's compare-and-set checks its version and next fire).
    job = await jobs_table.get_or_raise(job_id=job.id)
    if edit.moves_fire:
        await engine.reschedule(rt, job, previous_fire)
    if "enabled" in edit.changes:
        await engine.publish(rt, "job.enabled" if job.enabled else "job.disabled", job.id, enabled=job.enabled)
    else:
        await engine.publish(rt, JOB_UPDATED, job.id, enabled=job.enabled)


JOB_UPDATED = "job.updated"
# The settings an edit writes and audits, by the creation body's names (an interval is written as its schedule).
_WIRE_FIELDS = tuple(name for name in EDITABLE if name != "interval")


def _row_of(rt: Runtime, spec: JobCreate, job: Job, *, payload_sent: bool) -> dict[str, Any]:
    """The job's editable columns from a validated creation body (the payload through its type's schema only
    when the edit sends one: an untouched payload stays as it is even if its type's schema changed since)."""
    payload = registry.validate_payload(registry.get(job.type), spec.payload, rt.settings) if payload_sent else None
    retry = spec.retry.policy() if spec.retry is not None else None
    return {
        "name": spec.name,
        "description": spec.description,
        "schedule": _schedule_of(spec, rt.settings.scheduler_timezone, rt.now()),
        "timezone": spec.timezone,
        "payload": payload if payload is not None else job.payload,
        "timeout_seconds": spec.timeout,
        "enabled": spec.enabled,
        "retry": retry.to_row() if retry is not None else None,
        "overlap": spec.overlap,
        "catch_up_window_seconds": spec.catch_up.window_seconds() if spec.catch_up is not None else None,
        "catch_up_policy": spec.catch_up.policy if spec.catch_up is not None else engine.LATEST,
        "pause_after_failures": spec.pause_after_failures,
    }


def _settings_of(job: Job, *, deleted: bool = False) -> dict[str, list[Any]]:
    """A created (or deleted) job's settings as audit changes: each from null (or to null)."""
    wire = creation_input(job)
    return {k: [wire[k], None] if deleted else [None, wire[k]] for k in ("type", *_WIRE_FIELDS)}


def _wire_of(row: dict[str, Any]) -> dict[str, Any]:
    """The row's editable columns as the creation body names and writes them (to compare before and after)."""
    job = Job(**row)
    wire = creation_input(job)
    return {k: wire[k] for k in _WIRE_FIELDS}


async def start(rt: Runtime, *, job_id: str, actor: str) -> JobState:
    return await set_enabled(rt, job_id=job_id, enabled=True, actor=actor, event="jobs.start")


async def stop(rt: Runtime, *, job_id: str, actor: str) -> JobState:
    return await set_enabled(rt, job_id=job_id, enabled=False, actor=actor, event="jobs.stop")


class _Timing(Protocol):
    interval: str | None
    schedule: str | None
    timezone: str | None


def _schedule_of(spec: _Timing, default_tz: str, now: datetime) -> str:
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
            created = _settings_of(job)
            details = {"type": spec.type, "schedule": schedule, "enabled": spec.enabled, "changes": created}
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
        details = {"type": job.type, "schedule": job.schedule, "changes": _settings_of(job, deleted=True)}
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


@dataclass(frozen=True, slots=True)
class Preview:
    schedule: str  # as a job created with it would show it (an interval as `@every …`)
    timezone: str  # the one its fires are computed in (the job's, else SCHEDULER_TIMEZONE)
    fires: list[datetime]


def preview(rt: Runtime, *, data: object) -> Preview:
    """The next `count` fires of a schedule nobody has saved yet, validated as on creation, computed as the
    engine computes a job's (app.platform.schedule, DST included)."""
    spec = validated(SchedulePreviewInput, data, what="schedule preview")
    now = rt.now()
    expression = _schedule_of(spec, rt.settings.scheduler_timezone, now)
    tz = spec.timezone or rt.settings.scheduler_timezone
    count = DEFAULT_PREVIEW if spec.count is None else spec.count
    return Preview(expression, tz, _following(validate_schedule(expression, tz), now, count))


def next_fires(rt: Runtime, state: JobState, count: int | str | None) -> list[datetime]:
    """The job's next `count` fires (at most 100): its pending fire first, then its schedule's; none while
    stopped."""
    if not state.job.enabled:
        return []
    wanted = _count(count)
    pending = state.next_run
    schedule = engine.schedule_of(state.job, rt)
    if pending is None:
        return _following(schedule, rt.now(), wanted)
    return [pending, *_following(schedule, pending, wanted - 1)]


def _count(count: int | str | None) -> int:
    message = f"count must be an integer between 1 and {MAX_PREVIEW}"
    value = DEFAULT_PREVIEW if count is None else as_int(count, message, "invalid_count")
    if not 1 <= value <= MAX_PREVIEW:
        raise Invalid(message, code="invalid_count")
    return value


def _following(schedule: Schedule, after: datetime, count: int) -> list[datetime]:
    fires: list[datetime] = []
    while len(fires) < count:
        try:
            after = schedule.next_after(after)
        except (ScheduleError, OverflowError):
            break  # past the last instant datetime can hold
        fires.append(after)
    return fires
