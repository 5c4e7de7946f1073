from __future__ import annotations

from tortoise import fields
from tortoise.models import Model


class Activity(Model):
    """An audit entry for a management operation (`jobs.update`, `jobs.trigger`, ...)."""

    id = fields.BigIntField(primary_key=True)
    event = fields.CharField(max_length=64)
    job_id = fields.CharField(max_length=64, null=True)
    actor = fields.CharField(max_length=100)
    details: fields.Field[dict[str, object]] = fields.JSONField(default=dict)
    created_at = fields.DatetimeField(auto_now_add=True)
    # Where the change came from: the request's X-Request-ID and the client's address (null for the engine's own).
    request_id = fields.CharField(max_length=128, null=True)
    client_address = fields.CharField(max_length=64, null=True)

    class Meta:
        table = "activity"
        indexes = (("job_id", "id"), ("event", "id"), ("actor", "id"))
