"""The audit log of management operations."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.queryset import QuerySet

from app.data.activity import Activity
from app.data.jobs import validate_job_id
from app.platform import origin
from app.platform.errors import Invalid
from app.platform.pagination import Page, PageRequest, fetch_page, parse_instant

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
    """Write one entry, with the request it came from (app.platform.origin); pass `using_db` to make it part of
    the caller's transaction."""
    came_from = origin.current()
    return await Activity.create(
        event=event,
        actor=actor,
        job_id=job_id,
        details=details or {},
        request_id=came_from.request_id,
        client_address=came_from.client_address,
        using_db=using_db,
    )


async def list_entries(
    *,
    limit: int | str | None,
    offset: int | str | None,
    event: str | None = None,
    job_id: str | None = None,
    actor: str | None = None,
    since: datetime | str | None = None,
    until: datetime | str | None = None,
    before: int | str | None = None,
) -> Page[Activity]:
    """The audit log, newest first, filtered by any of event, job, actor and a time range [since, until)."""
    page = PageRequest.build(limit, offset, default=DEFAULT_LIMIT, maximum=MAX_LIMIT, before=before)
    return await fetch_page(_filtered(event=event, job_id=job_id, actor=actor, since=since, until=until), page)


def _filtered(
    *,
    event: str | None,
    job_id: str | None,
    actor: str | None,
    since: datetime | str | None,
    until: datetime | str | None,
) -> QuerySet[Activity]:
    if event is not None and event not in EVENTS:
        raise Invalid(f"event must be one of: {', '.join(EVENTS)}", code="invalid_event")
    query = Activity.all()
    if event is not None:
        query = query.filter(event=event)
    if job_id is not None:
        query = query.filter(job_id=validate_job_id(job_id))
    if actor is not None:
        query = query.filter(actor=actor)
    start, end = parse_instant(since, "since"), parse_instant(until, "until")
    if start is not None:
        query = query.filter(created_at__gte=start)
    if end is not None:
        query = query.filter(created_at__lt=end)
    return query


async def added_after(
    seen: int, *, events: list[str] | None = None, job_id: str | None = None, actor: str | None = None
) -> list[Activity]:
    """Entries with an id above `seen`, oldest first, of any of `events`, filtered as `list_entries` filters (the
    live audit view)."""
    query = _filtered(event=None, job_id=job_id, actor=actor, since=None, until=None)
    if events is not None:
        for event in events:
            _filtered(event=event, job_id=None, actor=None, since=None, until=None)  # refuses an unknown one
        query = query.filter(event__in=events)
    return list(await query.filter(id__gt=seen).order_by("id").limit(MAX_LIMIT))


async def latest_id() -> int:
    entry = await Activity.all().order_by("-id").first()
    return entry.id if entry is not None else 0
