from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, StrictBool

from app.jobs.service import JobState
from app.timefmt import iso_ms


class JobOut(BaseModel):
    """The spec's job object; the fields after `lastDuration` are jobs-gateway's additions."""

    id: str
    name: str
    description: str
    enabled: bool
    running: bool
    schedule: str
    lastRun: str | None
    nextRun: str | None
    lastResult: str | None
    lastDuration: int | None
    type: str
    payload: dict[str, Any]
    timezone: str | None
    timeout: float | None
    builtin: bool

    @classmethod
    def of(cls, state: JobState) -> JobOut:
        job = state.job
        return cls(
            id=job.id,
            name=job.name,
            description=job.description,
            enabled=job.enabled,
            running=state.running,
            schedule=job.schedule,
            lastRun=iso_ms(job.last_run_at),
            nextRun=iso_ms(state.next_run),
            lastResult=job.last_result,
            lastDuration=job.last_duration_ms,
            type=job.type,
            payload=job.payload,
            timezone=job.timezone,
            timeout=job.timeout_seconds,
            builtin=job.builtin,
        )


class JobUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: StrictBool


class ActionResult(BaseModel):
    success: bool = True
    message: str
