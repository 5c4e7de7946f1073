from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from app.activity.models import Activity
from app.pagination import Page
from app.timefmt import iso_ms


class ActivityOut(BaseModel):
    id: int
    event: str
    jobId: str | None
    actor: str
    details: dict[str, Any]
    createdAt: str

    @classmethod
    def of(cls, entry: Activity) -> ActivityOut:
        return cls(
            id=entry.id,
            event=entry.event,
            jobId=entry.job_id,
            actor=entry.actor,
            details=entry.details,
            createdAt=iso_ms(entry.created_at) or "",
        )


class ActivityPage(BaseModel):
    # The same page shape as the run logs, so one client-side pager serves both.
    logs: list[ActivityOut]
    total: int
    limit: int
    offset: int

    @classmethod
    def of(cls, page: Page[Activity]) -> ActivityPage:
        return cls(logs=[ActivityOut.of(a) for a in page.items], total=page.total, limit=page.limit, offset=page.offset)
