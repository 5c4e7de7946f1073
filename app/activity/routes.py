"""REST adapter for the activity (audit) log."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter

from app.activity import service as activity_service
from app.activity.schemas import ActivityPage
from app.api import openapi_docs as docs
from app.api.auth import Principal
from app.api.deps import may

router = APIRouter(prefix="/api/activity", tags=["activity"])


@router.get(
    "",
    response_model=ActivityPage,
    summary="The audit log",
    description="Who did what, newest first, with each changed field's before and after (`details.changes`), "
    "the request id and the client address: `limit` default 50, max 200; filter by `event`, `jobId`, `actor`, "
    "`since` and `until` (ISO 8601, on `createdAt`); `before=<id>` pages by keyset (each page's `nextBefore`).",
    responses=docs.example(docs.ACTIVITY_PAGE, docs.errors(400)),
)
async def list_activity(
    _: Annotated[Principal, may("activity")],
    limit: str | None = None,
    offset: str | None = None,
    event: str | None = None,
    jobId: str | None = None,  # noqa: N803 - the spec's name
    actor: str | None = None,
    since: str | None = None,
    until: str | None = None,
    before: str | None = None,
) -> ActivityPage:
    page = await activity_service.list_entries(
        limit=limit,
        offset=offset,
        event=event,
        job_id=jobId,
        actor=actor,
        since=since,
        until=until,
        before=before,
    )
    return ActivityPage.of(page)
