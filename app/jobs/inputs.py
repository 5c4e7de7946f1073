"""What a client sends to create a job, validated the same way whichever transport carries it."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from app.platform.validation import validated


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


def parse_job_create(data: object) -> JobCreate:
    return validated(JobCreate, data, what="job")
