"""GraphQL for the activity (audit) log."""

from __future__ import annotations

import strawberry
from strawberry.scalars import JSON

from app.activity import service as activity_service
from app.activity.schemas import activity_fields
from app.data.activity import Activity


@strawberry.type(name="Activity")
class ActivityType:
    id: int
    event: str
    job_id: strawberry.ID | None
    actor: str
    details: JSON
    created_at: str

    @classmethod
    def of(cls, entry: Activity) -> ActivityType:
        return cls(**activity_fields(entry))


@strawberry.type(name="ActivityPage")
class ActivityPageType:
    logs: list[ActivityType]
    total: int
    limit: int
    offset: int


@strawberry.type
class ActivityQuery:
    @strawberry.field(description="The audit log, newest first (limit at most 200).")
    async def activity(
        self,
        limit: int | None = 50,
        offset: int | None = 0,
        event: str | None = None,
        job_id: strawberry.ID | None = None,
    ) -> ActivityPageType:
        page = await activity_service.list_entries(
            limit=limit, offset=offset, event=event, job_id=str(job_id) if job_id is not None else None
        )
        return ActivityPageType(
            logs=[ActivityType.of(a) for a in page.items], total=page.total, limit=page.limit, offset=page.offset
        )
