"""REST adapter for the job-type registry."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter

from app.api import openapi_docs as docs
from app.api.auth import Principal
from app.api.deps import may
from app.job_types import service as job_types_service
from app.job_types.schemas import JobTypeOut

router = APIRouter(prefix="/api/job-types", tags=["job types"])


@router.get(
    "",
    response_model=list[JobTypeOut],
    summary="Registered job types",
    description="Each type a job can be created from, with the JSON Schema of its payload.",
    responses=docs.errors(),
)
async def list_job_types(_: Annotated[Principal, may("jobTypes")]) -> list[JobTypeOut]:
    return [JobTypeOut.of(t) for t in job_types_service.list_types()]
