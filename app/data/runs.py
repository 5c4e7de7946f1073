from __future__ import annotations

from tortoise import fields
from tortoise.models import Model

from app.platform.db_fields import DatetimeField


class Run(Model):
    """One execution of a job: the spec's log entry.

    `job_id` is a plain column, not a foreign key, so that the runs of a deleted job stay readable.
    `fire_at` is set for scheduled fires; `attempt` numbers a run's attempts (retries: app.engine.runs), which share its
    `fire_at` and `triggered_by`. (job_id, fire_at, attempt) is unique, which makes "this attempt of this fire
    already ran" durable whatever arq's own dedupe forgets.
    """

    id = fields.BigIntField(primary_key=True)
    job_id = fields.CharField(max_length=64)
    token = fields.CharField(max_length=64, unique=True)
    attempt = fields.IntField(default=1)
    triggered_by = fields.CharField(max_length=100)
    fire_at = DatetimeField(null=True)
    started_at = DatetimeField()
    completed_at = DatetimeField(null=True)
    duration_ms = fields.IntField(null=True)
    result = fields.CharField(max_length=16, null=True)
    details = fields.TextField(null=True)
    # The payload the handler was given: the job's, or a trigger's own. Null on the records of runs that never
    # started and of runs from before this column.
    payload: fields.Field[dict[str, object] | None] = fields.JSONField(null=True)
    # What the run said and did (app.engine.runlog): the JSON object its handler returned, its last progress
    # report ({done, total, note, at}), and for a failed run the exception's type and the handler's traceback.
    output: fields.Field[dict[str, object] | None] = fields.JSONField(null=True)
    progress: fields.Field[dict[str, object] | None] = fields.JSONField(null=True)
    error_type = fields.CharField(max_length=200, null=True)
    traceback = fields.TextField(null=True)

    class Meta:
        table = "job_run"
        unique_together = (("job_id", "fire_at", "attempt"),)
        indexes = (("job_id", "id"), ("completed_at", "id"))


class RunCount(Model):
    """How many runs a job has, kept exact by triggers on job_run (migration 0003).

    A log page's `total` is then one indexed row (or a sum over the jobs) instead of a COUNT over up to
    millions of runs. Written only by the database: the application never inserts or updates it.
    """

    job_id = fields.CharField(max_length=64, primary_key=True)
    runs = fields.BigIntField(default=0)

    class Meta:
        table = "job_run_count"


class RunLogLine(Model):
    """One line a run's handler logged (`ctx.log`), numbered from 1 within its run by `seq`.

    Written in batches while the run goes (app.engine.runlog), bounded per run, deleted with the run. `run_id` is a
    plain column like job_run's `job_id`: the lines are read by run and pruned with it."""

    id = fields.BigIntField(primary_key=True)
    run_id = fields.BigIntField()
    seq = fields.IntField()
    at = DatetimeField()
    level = fields.CharField(max_length=8)
    message = fields.TextField()
    extra: fields.Field[dict[str, object] | None] = fields.JSONField(null=True)  # the line's `fields` on the wire

    class Meta:
        table = "run_log"
        unique_together = (("run_id", "seq"),)
