"""REST adapters for jobs: parse, call the service, shape the answer."""

from __future__ import annotations

from typing import Annotated, Any

import pydantic_core
from fastapi import APIRouter, Body, Header, Request, Response
from fastapi.responses import JSONResponse

from app.api import idempotency as idempotent
from app.api import openapi_docs as docs
from app.api.auth import Principal
from app.api.deps import RuntimeDep, may
from app.api.etags import etag, expected_versions
from app.api.schemas import ActionResult
from app.jobs import service as jobs_service
from app.jobs.schemas import JobOut, NextFiresOut, SchedulePreviewOut, job_wire
from app.jobs.service import JobState
from app.platform.timefmt import iso_ms

router = APIRouter(prefix="/api/jobs", tags=["jobs"])
schedules_router = APIRouter(prefix="/api/schedules", tags=["jobs"])


class JobJSON(Response):
    """JSON serialised by pydantic's serializer, as `response_model` would, without validating first.

    For the job objects built here from the stores' own values: json.dumps took 47 µs for the 20-job
    list, pydantic_core 14 µs (B3). NaN and infinities become null, as pydantic writes them.
    """

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return _json(content)


def _json(content: Any) -> bytes:
    return pydantic_core.to_json(content, inf_nan_mode="null")


def _job_json(state: JobState) -> bytes:
    return _json(job_wire(state))


class JSONArray(Response):
    """A JSON array from its elements' JSON: the list's jobs, each serialised once and kept while unchanged
    (`jobs_service.list_rendered`); serialising the 20 objects again on every request was 4 % of its CPU (B3)."""

    media_type = "application/json"

    def render(self, content: list[bytes]) -> bytes:
        return b"[" + b",".join(content) + b"]"


@router.get(
    "",
    response_model=list[JobOut],
    summary="List all jobs",
    description="Every job with its current status and configuration.",
    responses=docs.example([docs.JOB], docs.errors()),
)
async def list_jobs(rt: RuntimeDep, _: Annotated[Principal, may("jobs")]) -> JSONArray:
    # Serialised straight from the service's values: returning them for `response_model` to validate
    # and dump again cost a sixth of the request's CPU (B3). The model still documents it.
    return JSONArray(await jobs_service.list_rendered(rt, _job_json))


@router.post(
    "",
    response_model=JobOut,
    status_code=201,
    summary="Create a job",
    description="A job of a registered type (GET /api/job-types), with exactly one of `interval` or `schedule`. "
    "With an `Idempotency-Key` header, the same key and body within 24 h replay the first answer "
    "(`Idempotent-Replayed: true`) and create nothing; the key with another body gets 422 `idempotency_key_reused`.",
    responses={
        201: {"content": {"application/json": {"example": docs.JOB}}},
        **docs.errors(400, 409, 413, 422),
    },
)
async def create_job(
    body: Annotated[Any, Body(openapi_examples={"spec": {"value": docs.CREATE_JOB}})],
    request: Request,
    rt: RuntimeDep,
    user: Annotated[Principal, may("createJob")],
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,  # noqa: ARG001 - documents it
) -> JSONResponse:
    async def create() -> tuple[int, Any]:
        return 201, job_wire(await jobs_service.create(rt, data=body, actor=user.actor))

    return await idempotent.respond(request, rt, user, body, create)


@router.delete(
    "/{jobId}",
    status_code=204,
    summary="Delete a job",
    description="Removes the job and its pending fire; its runs stay. Built-in and running jobs are refused (409).",
    responses=docs.errors(400, 404, 409),
)
async def delete_job(jobId: str, rt: RuntimeDep, user: Annotated[Principal, may("deleteJob")]) -> Response:  # noqa: N803
    await jobs_service.delete(rt, job_id=jobId, actor=user.actor)
    return Response(status_code=204)


@router.get(
    "/{jobId}",
    response_model=JobOut,
    summary="Get job details",
    responses=docs.example(docs.JOB, docs.errors(400, 404)),
)
async def get_job(jobId: str, rt: RuntimeDep, _: Annotated[Principal, may("job")]) -> JobJSON:  # noqa: N803 - the spec's name
    return _with_etag(await jobs_service.get(rt, job_id=jobId))


def _with_etag(state: JobState) -> JobJSON:
    return JobJSON(job_wire(state), headers={"ETag": etag(state.job.version)})


@router.patch(
    "/{jobId}",
    response_model=JobOut,
    summary="Edit a job, or enable or disable it",
    description='`{"enabled": bool}` is the spec\'s enable/disable: enabling schedules the next fire, disabling '
    "removes it. Any of `name`, `description`, `schedule` | `interval`, `timezone`, `payload`, `timeout`, `retry`, "
    "`overlap`, `catchUp`, `pauseAfterFailures` edit the job, validated as on creation; a new schedule moves the "
    "pending fire. A built-in job's name, description and payload are its code's (400). `If-Match` with the "
    "job's ETag: 412 `precondition_failed` once anybody else changed it.",
    responses=docs.example(docs.JOB, docs.errors(400, 404, 412, 413)),
)
async def update_job(
    jobId: str,  # noqa: N803
    body: Annotated[
        Any,
        Body(
            openapi_examples={
                "enable": {"value": {"enabled": True}},
                "edit": {"value": {"schedule": "0 */2 * * *", "timezone": "Europe/Paris", "timeout": 600}},
            }
        ),
    ],
    rt: RuntimeDep,
    user: Annotated[Principal, may("updateJob")],
    if_match: Annotated[str | None, Header(alias="If-Match")] = None,
) -> JobJSON:
    expected = expected_versions(if_match)
    return _with_etag(
        await jobs_service.update(rt, job_id=jobId, data=body, actor=user.actor, expected_version=expected)
    )


@router.post(
    "/{jobId}/start",
    response_model=ActionResult,
    summary="Start a job's scheduler",
    responses=docs.example(docs.STARTED, docs.errors(400, 404)),
)
async def start_job(jobId: str, rt: RuntimeDep, user: Annotated[Principal, may("startJob")]) -> ActionResult:  # noqa: N803
    await jobs_service.start(rt, job_id=jobId, actor=user.actor)
    return ActionResult(message="Job started successfully")


@router.post(
    "/{jobId}/stop",
    response_model=ActionResult,
    summary="Stop a job's scheduler",
    responses=docs.example(docs.STOPPED, docs.errors(400, 404)),
)
async def stop_job(jobId: str, rt: RuntimeDep, user: Annotated[Principal, may("stopJob")]) -> ActionResult:  # noqa: N803
    await jobs_service.stop(rt, job_id=jobId, actor=user.actor)
    return ActionResult(message="Job stopped successfully")


@router.get(
    "/{jobId}/fires/next",
    response_model=NextFiresOut,
    summary="Get the job's next fires",
    description="Its pending fire, then its schedule's next ones: `count` default 10, at most 100. Empty while "
    "the job is stopped.",
    responses=docs.example({"jobId": "metadata-sync", "fires": ["2024-01-15T12:00:00.000Z"]}, docs.errors(400, 404)),
)
async def next_fires(
    jobId: str,  # noqa: N803 - the spec's name
    rt: RuntimeDep,
    _: Annotated[Principal, may("nextFires")],
    count: str | None = None,
) -> NextFiresOut:
    state = await jobs_service.get(rt, job_id=jobId)
    fires = jobs_service.next_fires(rt, state, count)
    return NextFiresOut(job_id=state.job.id, fires=[iso_ms(f) or "" for f in fires])


@schedules_router.post(
    "/preview",
    response_model=SchedulePreviewOut,
    summary="Preview a schedule",
    description="The next `count` (default 10, at most 100) fires of exactly one of `schedule` or `interval`, in "
    "`timezone` (default SCHEDULER_TIMEZONE), computed as the engine computes a job's, DST included. Bad input gets "
    "the 400 that creating a job with it would.",
    responses=docs.example(
        {"schedule": "0 */6 * * *", "timezone": "UTC", "fires": ["2024-01-15T12:00:00.000Z"]}, docs.errors(400, 413)
    ),
)
async def preview_schedule(
    body: Annotated[Any, Body(openapi_examples={"cron": {"value": {"schedule": "0 2 * * *", "count": 3}}})],
    rt: RuntimeDep,
    _: Annotated[Principal, may("schedulePreview")],
) -> SchedulePreviewOut:
    return SchedulePreviewOut.of(jobs_service.preview(rt, data=body))
