"""The audit log of management operations."""

from __future__ import annotations

from typing import Any

from tortoise.backends.base.client import BaseDBAsyncClient

from app.data.activity import Activity
from app.data.jobs import validate_job_id
from app.platform.errors import Invalid
from app.platform.pagination import Page, PageRequest, fetch_page

EVENTS = (
    "jobs.update",
    "jobs.start",
    "jobs.stop",
    "jobs.trigger",
    "jobs.cancel",
    "jobs.create",
    "jobs.delete",
    "jobs.auto_pause",
)
DEFAULT_LIMIT = 50
MAX_LIMIT = 200


async def record(
    *,
    event: str,
    actor: str,
    job_id: str | None,
    details: dict[str, Any] | None = None,
    using_db: BaseDBAsyncClient | None = None,
) -> Activity:
    """Write one entry; pass `using_db` to make it part of the caller's transaction."""
    return await Activity.create(event=event, actor=actor, job_id=job_id, details=details or {}, using_db=using_db)


async def list_entries(
    *, limit: int | str | None, offset: int | str | None, event: str | None = None, job_id: str | None = None
) -> Page[Activity]:
    page = PageRequest.build(limit, offset, default=DEFAULT_LIMIT, maximum=MAX_LIMIT)
    if event is not None and event not in EVENTS:
        raise Invalid(f"event must be one of: {', '.join(EVENTS)}", code="invalid_event")
    query = Activity.all()
    if event is not None:
        query = query.filter(event=event)
    if job_id is not None:
        query = query.filter(job_id=validate_job_id(job_id))
    return await fetch_page(query, page)
