"""REST adapters for jobs: parse, call the service, shape the answer."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Response

from app.deps import AdminDep, RuntimeDep
from app.jobs import service as jobs_service
from app.jobs.schemas import ActionResult, JobOut, JobUpdate

router = APIRouter(prefix="/api/jobs", tags=["jobs"])


@router.get("", response_model=list[JobOut])
async def list_jobs(rt: RuntimeDep, _: AdminDep) -> list[JobOut]:
    return [JobOut.of(s) for s in await jobs_service.list_jobs(rt)]


@router.post("", response_model=JobOut, status_code=201)
async def create_job(body: Annotated[Any, Body()], rt: RuntimeDep, user: AdminDep) -> JobOut:
    return JobOut.of(await jobs_service.create(rt, data=body, actor=user.actor))


@router.delete("/{jobId}", status_code=204)
async def delete_job(jobId: str, rt: RuntimeDep, user: AdminDep) -> Response:  # noqa: N803
    await jobs_service.delete(rt, job_id=jobId, actor=user.actor)
    return Response(status_code=204)


@router.get("/{jobId}", response_model=JobOut)
async def get_job(jobId: str, rt: RuntimeDep, _: AdminDep) -> JobOut:  # noqa: N803 - the spec's name
    return JobOut.of(await jobs_service.get(rt, job_id=jobId))


@router.patch("/{jobId}", response_model=JobOut)
async def update_job(jobId: str, body: JobUpdate, rt: RuntimeDep, user: AdminDep) -> JobOut:  # noqa: N803
    return JobOut.of(await jobs_service.set_enabled(rt, job_id=jobId, enabled=body.enabled, actor=user.actor))


@router.post("/{jobId}/start", response_model=ActionResult)
async def start_job(jobId: str, rt: RuntimeDep, user: AdminDep) -> ActionResult:  # noqa: N803
    await jobs_service.start(rt, job_id=jobId, actor=user.actor)
    return ActionResult(message="Job started successfully")


@router.post("/{jobId}/stop", response_model=ActionResult)
async def stop_job(jobId: str, rt: RuntimeDep, user: AdminDep) -> ActionResult:  # noqa: N803
    await jobs_service.stop(rt, job_id=jobId, actor=user.actor)
    return ActionResult(message="Job stopped successfully")
