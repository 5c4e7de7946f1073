from __future__ import annotations

from datetime import timedelta
from typing import Any

from pydantic import Field

from app.data.app_tables import Listing
from app.job_types.registry import Payload, RunContext, job_type
from app.platform.timefmt import utcnow


class CleanupExpiredListingsPayload(Payload):
    days_old: int = Field(
        default=30, ge=1, le=36500, description="Listings created longer ago than this many days are deleted"
    )


@job_type(
    "cleanup_expired_listings",
    "Removes listings created more than `days_old` days ago",
    CleanupExpiredListingsPayload,
)
async def cleanup_expired_listings(ctx: RunContext) -> dict[str, Any]:
    days = ctx.payload.days_old
    deleted = await Listing.filter(created_at__lt=utcnow() - timedelta(days=days)).delete()
    return {"summary": f"Deleted {deleted} listings older than {days} days", "deleted": deleted, "daysOld": days}
