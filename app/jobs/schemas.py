from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, StrictBool
from pydantic.alias_generators import to_camel

from app.jobs.service import JobState
from app.timefmt import iso_ms


def job_fields(state: JobState) -> dict[str, Any]:
    """The job object's fields, in the spec's order then ours; REST and GraphQL both render these."""
    job = state.job
    return {
        "id": job.id,
        "name": job.name,
        "description": job.description,
        "enabled": job.enabled,
        "running": state.running,
        "schedule": job.schedule,
        "last_run": iso_ms(job.last_run_at),
        "next_run": iso_ms(state.next_run),
        "last_result": job.last_result,
        "last_duration": job.last_duration_ms,
        "type": job.type,
        "payload": dict(job.payload),
        "timezone": job.timezone,
        "timeout": job.timeout_seconds,
        "builtin": job.builtin,
    }


class CamelModel(BaseModel):
    """Snake-case fields in Python, the spec's camelCase names on the wire."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, serialize_by_alias=True)


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

    @classmethod
    def of(cls, state: JobState) -> JobOut:
        return cls(**job_fields(state))


class JobUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: StrictBool


class ActionResult(BaseModel):
    success: bool = True
    message: str
