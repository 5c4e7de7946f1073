from __future__ import annotations

from typing import Any

from app.api.schemas import CamelModel
from app.data.activity import Activity
from app.platform.pagination import Page
from app.platform.timefmt import iso_ms


def activity_fields(entry: Activity) -> dict[str, Any]:
    """An audit entry's fields; REST and GraphQL both render these."""
    return {
        "id": entry.id,
        "event": entry.event,
        "job_id": entry.job_id,
        "actor": entry.actor,
        "details": dict(entry.details),
        "created_at": iso_ms(entry.created_at) or "",
        "request_id": entry.request_id,
        "client_address": entry.client_address,
    }


class ActivityOut(CamelModel):
    id: int
    event: str
    job_id: str | None
    actor: str
    details: dict[str, Any]
    created_at: str
    request_id: str | None
    client_address: str | None


class ActivityPage(CamelModel):
    # The same page shape as the run logs, so one client-side pager serves both.
    logs: list[ActivityOut]
    total: int
    limit: int
    offset: int
    next_before: int | None  # the `before` of the next page; null on the last one

    @classmethod
    def of(cls, page: Page[Activity]) -> ActivityPage:
        logs = [ActivityOut(**activity_fields(a)) for a in page.items]
        return cls(logs=logs, total=page.total, limit=page.limit, offset=page.offset, next_before=page.next_before)
