"""REST adapters for runs: trigger now and the execution logs."""

from __future__ import annotations

from fastapi import APIRouter

from app.deps import AdminDep, RuntimeDep
from app.jobs.schemas import ActionResult
from app.runs import service as runs_service
from app.runs.schemas import RunPage

router = APIRouter(prefix="/api/jobs", tags=["runs"])


@router.get("/logs/all", response_model=RunPage)
async def all_logs(_: AdminDep, limit: str | None = None, offset: str | None = None) -> RunPage:
    page = await runs_service.list_all(limit=limit, offset=offset)
    return RunPage.of(page)


@router.get("/{jobId}/logs", response_model=RunPage)
async def job_logs(
    jobId: str,  # noqa: N803 - the spec's name
    _: AdminDep,
    limit: str | None = None,
    offset: str | None = None,
) -> RunPage:
    page = await runs_service.list_for_job(job_id=jobId, limit=limit, offset=offset)
    return RunPage.of(page)


@router.post("/{jobId}/trigger", response_model=ActionResult)
async def trigger_job(jobId: str, rt: RuntimeDep, user: AdminDep) -> ActionResult:  # noqa: N803
    await runs_service.trigger(rt, job_id=jobId, actor=user.actor)
    return ActionResult(message="Job triggered successfully")
