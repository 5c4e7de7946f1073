"""REST adapter for the activity (audit) log."""

from __future__ import annotations

from fastapi import APIRouter

from app.activity import service as activity_service
from app.activity.schemas import ActivityPage
from app.api import openapi_docs as docs
from app.api.deps import AdminDep

router = APIRouter(prefix="/api/activity", tags=["activity"])


@router.get(
    "",
    response_model=ActivityPage,
    summary="The audit log",
    description="Who did what, newest first: `limit` default 50, max 200; filter by `event` and `jobId`.",
    responses=docs.example(docs.ACTIVITY_PAGE, docs.errors(400)),
)
async def list_activity(
    _: AdminDep,
    limit: str | None = None,
    offset: str | None = None,
    event: str | None = None,
    jobId: str | None = None,  # noqa: N803 - the spec's name
) -> ActivityPage:
    page = await activity_service.list_entries(limit=limit, offset=offset, event=event, job_id=jobId)
    return ActivityPage.of(page)
