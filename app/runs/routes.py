"""REST adapters for runs: trigger now and the execution logs."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Request
from fastapi.responses import JSONResponse

from app.api import idempotency as idempotent
from app.api import openapi_docs as docs
from app.api.auth import Principal
from app.api.deps import RuntimeDep, may
from app.api.schemas import ActionResult
from app.runs import service as runs_service
from app.runs.schemas import RunDetail, RunLogPage, RunPage, SkippedFirePage
from app.runs.service import RunFilter

router = APIRouter(prefix="/api/jobs", tags=["runs"])
run_router = APIRouter(prefix="/api/runs", tags=["runs"])
FILTERS = (
    "`before=<id>` pages by keyset (each page's `nextBefore`: the same cost at any depth) next to `offset`; "
    "filters `result` (success, error, running), `triggeredBy`, `since` and `until` (ISO 8601, on `startedAt`)."
)


@router.get(
    "/logs/all",
    response_model=RunPage,
    summary="Get all job logs",
    description="Runs of every job, newest first: `limit` default 100, max 200. " + FILTERS,
    responses=docs.example(docs.RUN_PAGE, docs.errors(400)),
)
async def all_logs(
    _: Annotated[Principal, may("allJobLogs")],
    limit: str | None = None,
    offset: str | None = None,
    before: str | None = None,
    result: str | None = None,
    triggeredBy: str | None = None,  # noqa: N803 - the wire's name
    since: str | None = None,
    until: str | None = None,
) -> RunPage:
    filters = RunFilter(result=result, triggered_by=triggeredBy, since=since, until=until)
    return RunPage.of(await runs_service.list_all(limit=limit, offset=offset, before=before, filters=filters))


@router.get(
    "/{jobId}/logs",
    response_model=RunPage,
    summary="Get job execution logs",
    description="Runs of one job, newest first: `limit` default 50, max 100. A run in progress has nulls. " + FILTERS,
    responses=docs.example(docs.RUN_PAGE, docs.errors(400, 404)),
)
async def job_logs(
    jobId: str,  # noqa: N803 - the spec's name
    _: Annotated[Principal, may("jobLogs")],
    limit: str | None = None,
    offset: str | None = None,
    before: str | None = None,
    result: str | None = None,
    triggeredBy: str | None = None,  # noqa: N803 - the wire's name
    since: str | None = None,
    until: str | None = None,
) -> RunPage:
    filters = RunFilter(result=result, triggered_by=triggeredBy, since=since, until=until)
    page = await runs_service.list_for_job(job_id=jobId, limit=limit, offset=offset, before=before, filters=filters)
    return RunPage.of(page)


@router.post(
    "/{jobId}/trigger",
    response_model=ActionResult,
    summary="Trigger a job manually",
    description='Runs the job now, enabled or not. No body: with the job\'s payload; `{"payload": {...}}`: with '
    "that payload, validated by the job type's schema (400 naming each field), kept on the run record. 409 while a "
    "run holds the job; 503 while Redis is down. With an `Idempotency-Key` header, a retry within 24 h replays the "
    "first answer and runs nothing.",
    responses=docs.example(docs.TRIGGERED, docs.errors(400, 404, 409, 422, 503)),
)
async def trigger_job(
    jobId: str,  # noqa: N803
    request: Request,
    rt: RuntimeDep,
    user: Annotated[Principal, may("triggerJob")],
    body: Annotated[Any, Body(openapi_examples={"payload": {"value": {"payload": {"batchSize": 10}}}})] = None,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,  # noqa: ARG001 - documents it
) -> JSONResponse:
    async def trigger() -> tuple[int, Any]:
        await runs_service.trigger(rt, job_id=jobId, actor=user.actor, body=body)
        return 200, ActionResult(message="Job triggered successfully").model_dump()

    return await idempotent.respond(request, rt, user, body, trigger)


@router.post(
    "/{jobId}/cancel",
    response_model=ActionResult,
    summary="Cancel the job's current run",
    description="Stops the run wherever it executes; the run is recorded as `error`, `cancelled by <actor>`, "
    "once its handler has stopped (until then the job shows `running` and `cancelling`). A retry waiting out its "
    "backoff ends at once. 409 `not_running` when no run is in progress; 503 while Redis is down.",
    responses=docs.example(docs.CANCELLED, docs.errors(400, 404, 409, 503)),
)
async def cancel_run(jobId: str, rt: RuntimeDep, user: Annotated[Principal, may("cancelJobRun")]) -> ActionResult:  # noqa: N803
    await runs_service.cancel(rt, job_id=jobId, actor=user.actor)
    return ActionResult(message="Run cancelled")


@router.get(
    "/{jobId}/fires/skipped",
    response_model=SkippedFirePage,
    summary="Get the job's skipped fires",
    description="Scheduled fires that did not run, newest first, with the reason: `overlap`, "
    "`outside_catch_up_window`, `disabled` or `cancelled_by_policy`. `limit` default 50, max 100; `before=<id>` "
    "pages by keyset (each page's `nextBefore`) past the deepest offset.",
    responses=docs.example(docs.SKIPPED_PAGE, docs.errors(400, 404)),
)
async def skipped_fires(
    jobId: str,  # noqa: N803 - the spec's name
    _: Annotated[Principal, may("skippedFires")],
    limit: str | None = None,
    offset: str | None = None,
    before: str | None = None,
) -> SkippedFirePage:
    page = await runs_service.list_skipped(job_id=jobId, limit=limit, offset=offset, before=before)
    return SkippedFirePage.of(page)


@run_router.get(
    "/{runId}",
    response_model=RunDetail,
    summary="Get one run",
    description="The run's log entry, then `output` (the JSON object its handler returned), `progress` (its latest "
    "report: done, total, note, at) and, for a failed run, `errorType` and the handler's `traceback`. 404 "
    "`run_not_found`.",
    responses=docs.example(docs.RUN_DETAIL, docs.errors(400, 404)),
)
async def get_run(runId: str, _: Annotated[Principal, may("run")]) -> RunDetail:  # noqa: N803 - the wire's name
    return RunDetail.of(await runs_service.get_run(run_id=runId))


@run_router.get(
    "/{runId}/log",
    response_model=RunLogPage,
    summary="Get a run's log lines",
    description="The lines the run's handler logged, in order, numbered from 1 (`seq`): those past `after` "
    "(default 0), `limit` of them (default 100, max 1,000). The next page's `after` is the answer's; `more`: more "
    "lines are stored; `ended`: the run has ended, so no line will follow. A run keeps its first RUN_LOG_MAX_LINES "
    "lines and RUN_LOG_MAX_BYTES, then one line saying what was dropped.",
    responses=docs.example(docs.RUN_LOG_PAGE, docs.errors(400, 404)),
)
async def run_log(
    runId: str,  # noqa: N803 - the wire's name
    _: Annotated[Principal, may("runLog")],
    after: str | None = None,
    limit: str | None = None,
) -> RunLogPage:
    return RunLogPage.of(await runs_service.log_page(run_id=runId, after=after, limit=limit))
