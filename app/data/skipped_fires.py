"""Scheduled fires that did not produce a run, and why (app.engine.skips writes them)."""

from __future__ import annotations

from tortoise import fields
from tortoise.models import Model

from app.platform.db_fields import DatetimeField


class SkippedFire(Model):
    """A scheduled fire, or a range of missed ones, that did not run, and why.

    A range holds `count` instants from `fire_at` to `last_fire_at` (one instant: the two are equal). `job_id` is
    a plain column, as on job_run: the record outlives its job until it is pruned."""

    id = fields.BigIntField(primary_key=True)
    job_id = fields.CharField(max_length=64)
    fire_at = DatetimeField()
    last_fire_at = DatetimeField()
    count = fields.IntField(default=1)
    reason = fields.CharField(max_length=32)
    recorded_at = DatetimeField()

    class Meta:
        table = "skipped_fire"
        unique_together = (("job_id", "fire_at"),)
        indexes = (("job_id", "id"), ("recorded_at", "id"))
