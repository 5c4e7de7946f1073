from __future__ import annotations

from tortoise import fields
from tortoise.models import Model

from app.platform.db_fields import DatetimeField


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
