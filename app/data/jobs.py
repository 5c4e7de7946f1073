"""The job table, and the rule for a job's id (its primary key), shared by every lookup and filter."""

from __future__ import annotations

import re

from tortoise import fields
from tortoise.models import Model

from app.platform.db_fields import DatetimeField
from app.platform.errors import Invalid

JOB_ID_PATTERN = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
JOB_ID_MAX = 64


def validate_job_id(job_id: str) -> str:
    if len(job_id) > JOB_ID_MAX or not JOB_ID_PATTERN.fullmatch(job_id):
        raise Invalid(
            "Invalid job ID format: use lowercase letters and digits in words joined by single hyphens, "
            f"at most {JOB_ID_MAX} characters",
            code="invalid_job_id",
        )
    return job_id


class Job(Model):
    """A registered job: its schedule and the outcome of its last run.

    Whether it is running is not stored here: the run lease in Redis is the truth.
    """

    id = fields.CharField(max_length=64, primary_key=True)
    name = fields.CharField(max_length=200)
    description = fields.TextField(default="")
    type = fields.CharField(max_length=100)
    payload: fields.Field[dict[str, object]] = fields.JSONField(default=dict)
    schedule = fields.CharField(max_length=200)
    timezone = fields.CharField(max_length=64, null=True)
    timeout_seconds = fields.FloatField(null=True)
    builtin = fields.BooleanField(default=False)
    enabled = fields.BooleanField(default=True)
    # The fire that is actually enqueued in arq; null while stopped.
    next_run_at = DatetimeField(null=True)
    last_run_at = DatetimeField(null=True)
    last_result = fields.CharField(max_length=16, null=True)
    last_duration_ms = fields.IntField(null=True)
    created_at = DatetimeField(auto_now_add=True)
    updated_at = DatetimeField(auto_now=True)

    class Meta:
        table = "job"
