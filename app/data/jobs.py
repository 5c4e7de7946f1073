"""The job table, and the rule for a job's id (its primary key), shared by every lookup and filter."""

from __future__ import annotations

import functools
import re
import weakref
from collections.abc import Hashable, Sequence
from typing import Any

from tortoise import fields
from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.models import Model

from app.adapters.tortoise.rows import client_of, instances, parameterized
from app.platform.db import commit_version
from app.platform.db_fields import DatetimeField
from app.platform.errors import Invalid, NotFound

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
    # Run lifecycle policy (app.engine.policy reads these): null retry is none, null window the global default.
    retry: fields.Field[dict[str, object] | None] = fields.JSONField(null=True)
    # A database default too: the column is added to tables that already hold jobs.
    overlap = fields.CharField(max_length=16, default="skip", db_default="skip")
    catch_up_window_seconds = fields.FloatField(null=True)
    catch_up_policy = fields.CharField(max_length=16, default="latest", db_default="latest")
    pause_after_failures = fields.IntField(null=True)
    # Runs (each with all its attempts) that ended in failure since the last success or re-enable.
    consecutive_failures = fields.IntField(default=0, db_default=0)
    # The last scheduled fire that did not run, and why (app.engine.skips).
    last_skipped_at = DatetimeField(null=True)
    last_skip_reason = fields.CharField(max_length=32, null=True)
    updated_at = DatetimeField(auto_now=True)
    # Bumped by every change of what a client set (an edit, enable/disable, auto-pause), never by a run: the
    # ETag and GraphQL's expectedVersion compare it (optimistic concurrency).
    version = fields.IntField(default=1, db_default=1)

    class Meta:
        table = "job"


# --- Reads on the hot paths (GET /api/jobs, a job by id): SQL compiled once, rows turned into jobs cheaply ------


def not_found(job_id: str) -> NotFound:
    return NotFound(f"Job '{job_id}' not found", code="job_not_found")


async def get_or_raise(*, job_id: str) -> Job:
    """The job; Invalid for a malformed id, NotFound for an unknown one."""
    job = await get_or_none(validate_job_id(job_id))
    if job is None:
        raise not_found(job_id)
    return job


_ID_PLACEHOLDER = "\x00job-id\x00"


@functools.cache
def _by_id_sql() -> tuple[str, tuple[object, ...]]:
    """`Job.get_or_none(id=…)`'s SQL and parameters, with a placeholder value where the id goes.

    Compiled once per process (one database backend per process): tortoise compiles a query again on every
    execution, which cost more than running it.
    """
    sql, params = parameterized(Job.filter(id=_ID_PLACEHOLDER).limit(1))
    assert params.count(_ID_PLACEHOLDER) == 1, params
    return sql, tuple(params)


async def get_or_none(job_id: str) -> Job | None:
    sql, params = _by_id_sql()
    values = [job_id if p == _ID_PLACEHOLDER else p for p in params]
    jobs = from_rows(await client_of(Job).execute_query_dict(sql, values))
    return jobs[0] if jobs else None


def from_rows(rows: Sequence[dict[str, Any]]) -> list[Job]:
    """Jobs from full rows, as `Job.raw` builds them: `Job.raw` took 185 µs of the 280 µs that reading 20 jobs
    cost (B3), most of it per-field calls. Each row's values are copied: the rows stay untouched."""
    return instances(Job, rows)


@functools.cache
def _all_sql() -> str:
    return Job.all().order_by("id").sql()


# Per database client (a test's, a process's), forgotten with it: (commit version, the job table's rows then).
_rows_seen: weakref.WeakKeyDictionary[BaseDBAsyncClient, tuple[Hashable, list[dict[str, Any]]]] = (
    weakref.WeakKeyDictionary()
)


async def all_rows() -> tuple[list[dict[str, Any]], bool]:
    """Every job's row, in id order (shared, never mutate them), and whether a later call may return this
    same list.

    Where the database tells when it was last written (SQLite: `commit_version`), the previous call's rows
    (the same list) while nobody has committed since: reading and converting 20 rows was 15 % of a list
    request's CPU (B3), and a dashboard reads the list far more often than anything is written. A commit
    anywhere (a run recorded by any worker, an edit by another instance) makes the next call read again.
    """
    db = client_of(Job)
    version = commit_version(db)  # before the read: a commit in between then only makes the rows newer
    known = _rows_seen.get(db)
    if version is not None and known is not None and known[0] == version:
        return known[1], True
    rows: list[dict[str, Any]] = await db.execute_query_dict(_all_sql())
    if version is not None:
        _rows_seen[db] = (version, rows)
    return rows, version is not None
