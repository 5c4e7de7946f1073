from __future__ import annotations

from datetime import timedelta
from typing import Any

from app import engine
from app.api.schemas import CamelModel
from app.jobs.service import JobState, Preview
from app.platform.schedule import format_go_duration
from app.platform.timefmt import iso_ms


class RetryOut(CamelModel):
    """`retry` as the job applies it, durations as Go durations."""

    max_attempts: int
    backoff: str
    max_backoff: str
    multiplier: float
    jitter: float


class CatchUpOut(CamelModel):
    """`catchUp` as the job applies it: its own or the global default window."""

    window: str
    policy: str


class SkippedFireRef(CamelModel):
    """The job's latest fire that did not run, and why."""

    fire_at: str
    reason: str


class JobOut(CamelModel):
    """The spec's job object; the fields after `lastDuration` are jobs-gateway's additions."""

    id: str
    name: str
    description: str
    enabled: bool
    running: bool
    schedule: str
    last_run: str | None
    next_run: str | None
    last_result: str | None
    last_duration: int | None
    type: str
    payload: dict[str, Any]
    timezone: str | None
    timeout: float | None
    builtin: bool
    retry: RetryOut | None
    overlap: str
    catch_up: CatchUpOut
    pause_after_failures: int | None
    consecutive_failures: int
    cancelling: bool
    last_skipped_fire: SkippedFireRef | None
    version: int

    @classmethod
    def of(cls, state: JobState) -> JobOut:
        return cls(**job_fields(state))


def _job_values(state: JobState) -> tuple[Any, ...]:
    """The job object's values, in the order of JobOut's fields: the spec's, then ours."""
    job = state.job
    return (
        job.id,
        job.name,
        job.description,
        job.enabled,
        state.running,
        job.schedule,
        iso_ms(job.last_run_at),
        iso_ms(state.next_run),
        job.last_result,
        job.last_duration_ms,
        job.type,
        dict(job.payload),
        job.timezone,
        job.timeout_seconds,
        job.builtin,
        _retry(engine.retry_of(job)),
        job.overlap,
        {"window": _seconds(state.catch_up.window), "policy": state.catch_up.policy},
        job.pause_after_failures,
        job.consecutive_failures,
        state.cancelling,
        _skipped(state),
        job.version,
    )


def _seconds(seconds: float) -> str:
    return format_go_duration(timedelta(seconds=seconds))


def _retry(retry: engine.Retry | None) -> dict[str, Any] | None:
    if retry is None:
        return None
    return {
        "maxAttempts": retry.max_attempts,
        "backoff": _seconds(retry.backoff),
        "maxBackoff": _seconds(retry.max_backoff),
        "multiplier": retry.multiplier,
        "jitter": retry.jitter,
    }


def _skipped(state: JobState) -> dict[str, Any] | None:
    job = state.job
    if job.last_skipped_at is None or job.last_skip_reason is None:
        return None
    return {"fireAt": iso_ms(job.last_skipped_at), "reason": job.last_skip_reason}


_NAMES = tuple(JobOut.model_fields)
_WIRE_NAMES = tuple(field.alias or name for name, field in JobOut.model_fields.items())


def job_fields(state: JobState) -> dict[str, Any]:
    """The job object's fields by their Python names (an object field's own fields camelCase, as on the wire);
    REST and GraphQL both render these."""
    return dict(zip(_NAMES, _job_values(state), strict=True))


def job_wire(state: JobState) -> dict[str, Any]:
    """The job object as it goes out in JSON (camelCase), the same as `JobOut.of(state)` dumps it.

    For answers built here from the stores' own values, which need no validation: `response_model`
    validating and then dumping a 20-job list cost more than building it (B3).
    """
    return dict(zip(_WIRE_NAMES, _job_values(state), strict=True))


class SchedulePreviewOut(CamelModel):
    """A schedule's next fires, as a job with it would have them."""

    schedule: str
    timezone: str
    fires: list[str]

    @classmethod
    def of(cls, preview: Preview) -> SchedulePreviewOut:
        return cls(schedule=preview.schedule, timezone=preview.timezone, fires=[iso_ms(f) or "" for f in preview.fires])


class NextFiresOut(CamelModel):
    job_id: str
    fires: list[str]
