"""What a client sends to create a job, validated the same way whichever transport carries it."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationInfo, field_validator

from app import engine
from app.data.jobs import Job
from app.platform.errors import Invalid
from app.platform.schedule import MAX_INTERVAL, ScheduleError, format_go_duration, parse_go_duration
from app.platform.validation import validated

MAX_BACKOFF = timedelta(seconds=engine.MAX_BACKOFF_SECONDS)
DEFAULT_BACKOFF = "10s"
DEFAULT_MAX_BACKOFF = timedelta(hours=1)
MAX_PAUSE_AFTER_FAILURES = 10_000


def _duration(text: str, longest: timedelta) -> timedelta:
    try:
        value = parse_go_duration(text)
    except ScheduleError as exc:
        raise ValueError(str(exc)) from None
    if value > longest:
        raise ValueError(f"{text!r} is longer than {format_go_duration(longest)}")
    return value


class RetryInput(BaseModel):
    """`retry`: how often, and how long apart, a failed run is attempted again."""

    model_config = ConfigDict(extra="forbid", strict=True)

    max_attempts: int = Field(alias="maxAttempts", ge=1, le=engine.MAX_ATTEMPTS)
    backoff: str = Field(default=DEFAULT_BACKOFF, max_length=64)
    max_backoff: str | None = Field(default=None, alias="maxBackoff", max_length=64)
    multiplier: float = Field(default=2.0, ge=1, le=engine.MAX_MULTIPLIER)
    jitter: float = Field(default=0.0, ge=0, le=1)

    @field_validator("backoff")
    @classmethod
    def _backoff(cls, text: str) -> str:
        _duration(text, MAX_BACKOFF)
        return text

    @field_validator("max_backoff")
    @classmethod
    def _max_backoff(cls, text: str | None, info: ValidationInfo) -> str | None:
        if text is None:
            return None
        longest = _duration(text, MAX_BACKOFF)
        backoff = info.data.get("backoff")
        if isinstance(backoff, str) and longest < _duration(backoff, MAX_BACKOFF):
            raise ValueError(f"{text!r} is shorter than backoff {backoff!r}")
        return text

    def policy(self) -> engine.Retry:
        backoff = _duration(self.backoff, MAX_BACKOFF)
        longest = (
            _duration(self.max_backoff, MAX_BACKOFF)
            if self.max_backoff is not None
            else max(backoff, DEFAULT_MAX_BACKOFF)
        )
        return engine.Retry(
            max_attempts=self.max_attempts,
            backoff=backoff.total_seconds(),
            max_backoff=longest.total_seconds(),
            multiplier=float(self.multiplier),
            jitter=float(self.jitter),
        )


class CatchUpInput(BaseModel):
    """`catchUp`: how late a fire may still start, and what runs of the fires missed while no worker ran."""

    model_config = ConfigDict(extra="forbid", strict=True)

    window: str | None = Field(default=None, max_length=64)
    policy: Literal["latest", "none"] = "latest"

    @field_validator("window")
    @classmethod
    def _go_duration(cls, text: str | None) -> str | None:
        if text is not None:
            _duration(text, MAX_INTERVAL)
        return text

    def window_seconds(self) -> float | None:
        """None: the global MISFIRE_GRACE_SECONDS."""
        return None if self.window is None else _duration(self.window, MAX_INTERVAL).total_seconds()


class JobCreate(BaseModel):
    # Strict: "30" is not a timeout and true is not a day count; a client's typo must not change a job.
    model_config = ConfigDict(extra="forbid", strict=True)

    id: str
    name: str = Field(min_length=1, max_length=200)
    description: str = Field(default="", max_length=2000)
    type: str = Field(min_length=1, max_length=100)
    interval: str | None = Field(default=None, max_length=64)
    schedule: str | None = Field(default=None, max_length=200)
    payload: dict[str, Any] = Field(default_factory=dict)
    enabled: StrictBool = True
    timeout: float | None = Field(default=None, gt=0, le=24 * 3600)
    timezone: str | None = Field(default=None, max_length=64)
    # Run lifecycle policy (app.engine.policy); left out, each keeps the behaviour jobs had before it existed.
    retry: RetryInput | None = None
    overlap: Literal["skip", "buffer_one", "cancel_running"] = "skip"
    catch_up: CatchUpInput | None = Field(default=None, alias="catchUp")
    pause_after_failures: int | None = Field(
        default=None, alias="pauseAfterFailures", ge=1, le=MAX_PAUSE_AFTER_FAILURES
    )


MAX_PREVIEW, DEFAULT_PREVIEW = 100, 10


class SchedulePreviewInput(BaseModel):
    """`POST /api/schedules/preview`: a schedule as a job would have it, and how many of its fires to list."""

    model_config = ConfigDict(extra="forbid", strict=True)

    interval: str | None = Field(default=None, max_length=64)
    schedule: str | None = Field(default=None, max_length=200)
    timezone: str | None = Field(default=None, max_length=64)
    count: int | None = Field(default=None, ge=1, le=MAX_PREVIEW)  # null: the default, as in GraphQL


class EnabledEdit(BaseModel):
    """The spec's PATCH body: `{"enabled": bool}` alone."""

    model_config = ConfigDict(extra="forbid")

    enabled: StrictBool


def parse_job_create(data: object) -> JobCreate:
    return validated(JobCreate, data, what="job")


# What a PATCH may change, by wire name. `id` and `type` are a job's identity: never editable.
EDITABLE = (
    "name",
    "description",
    "schedule",
    "interval",
    "timezone",
    "payload",
    "timeout",
    "enabled",
    "retry",
    "overlap",
    "catchUp",
    "pauseAfterFailures",
)
# A built-in job's definition is the code's: only when and how it runs is the admin's.
BUILTIN_FIXED = ("name", "description", "payload")
IDENTITY = ("id", "type")


def edit_fields(data: object, *, builtin: bool) -> dict[str, Any]:
    """The fields of a PATCH body, checked for what may be edited (the values are checked by `merged`)."""
    if not isinstance(data, dict):
        raise Invalid("The body must be a JSON object of the fields to change", code="validation_error")
    if not data:
        raise Invalid("Nothing to change: send at least one field", code="validation_error")
    for name in data:
        if name in IDENTITY:
            raise Invalid(
                f"{name} cannot be changed; create a new job instead",
                code="field_not_editable",
                details=[{"field": name, "message": "not editable", "type": "not_editable"}],
            )
        if builtin and name in BUILTIN_FIXED:
            raise Invalid(
                f"{name} of a built-in job cannot be changed",
                code="field_not_editable",
                details=[{"field": name, "message": "not editable on a built-in job", "type": "not_editable"}],
            )
    if "schedule" in data and "interval" in data:
        raise Invalid("Give exactly one of interval or schedule", code="validation_error")
    return dict(data)


def merged(current: dict[str, Any], edits: dict[str, Any]) -> JobCreate:
    """The job as it would be with the edits applied, through the one creation validator: an edit is accepted
    exactly when creating the job with the result would be (an unknown field is named there too)."""
    result = {**current, **edits}
    if "interval" in edits:
        result.pop("schedule", None)
    return parse_job_create(result)


def creation_input(job: Job) -> dict[str, Any]:
    """The creation body that makes this job as it is now (durations as Go durations)."""
    retry = engine.retry_of(job)
    window = job.catch_up_window_seconds
    return {
        "id": job.id,
        "type": job.type,
        "name": job.name,
        "description": job.description,
        "schedule": job.schedule,
        "timezone": job.timezone,
        "payload": dict(job.payload),
        "timeout": job.timeout_seconds,
        "enabled": job.enabled,
        "retry": None
        if retry is None
        else {
            "maxAttempts": retry.max_attempts,
            "backoff": _go(retry.backoff),
            "maxBackoff": _go(retry.max_backoff),
            "multiplier": retry.multiplier,
            "jitter": retry.jitter,
        },
        "overlap": job.overlap,
        "catchUp": {"window": None if window is None else _go(window), "policy": job.catch_up_policy},
        "pauseAfterFailures": job.pause_after_failures,
    }


def _go(seconds: float) -> str:
    return format_go_duration(timedelta(seconds=seconds))
