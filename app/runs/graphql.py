"""GraphQL for runs: log pages, and trigger now."""

from __future__ import annotations

from typing import Annotated, cast

import strawberry
from strawberry.scalars import JSON

from app.api.graphql_outcomes import JobNotFound, PermissionDenied, ValidationFailed, outcome
from app.data.runs import Run
from app.data.skipped_fires import SkippedFire
from app.platform.errors import AppError
from app.platform.pagination import Page
from app.runs import service as runs_service
from app.runs.schemas import run_fields, skipped_fields
from app.runs.service import RunFilter


@strawberry.type(
    name="JobLog", description="One run of a job; completedAt, duration and result are null while it runs."
)
class JobLogType:
    id: int
    job_id: strawberry.ID
    started_at: str | None
    completed_at: str | None
    duration: int | None
    result: str | None
    triggered_by: str
    details: str | None
    attempt: int = strawberry.field(description="1 for a run's first attempt; retries count up, same fireAt.")
    fire_at: str | None = strawberry.field(description="The scheduled instant a fire ran for; null for a trigger.")
    payload: JSON | None = strawberry.field(
        description="The payload the handler was given (a trigger's own, or the job's); null for a run that never "
        "started."
    )

    @classmethod
    def of(cls, run: Run) -> JobLogType:
        return cls(**run_fields(run))


@strawberry.type(name="JobLogPage")
class JobLogPageType:
    logs: list[JobLogType]
    total: int
    limit: int
    offset: int
    next_before: int | None = strawberry.field(
        description="`before` of the next page (keyset: the same cost at any depth); null on the last page."
    )

    @classmethod
    def of(cls, page: Page[Run]) -> JobLogPageType:
        logs = [JobLogType.of(r) for r in page.items]
        return cls(logs=logs, total=page.total, limit=page.limit, offset=page.offset, next_before=page.next_before)


@strawberry.type(
    name="SkippedFire",
    description="A scheduled fire that did not run (or `count` of them, fireAt to lastFireAt), and why: overlap, "
    "outside_catch_up_window, disabled or cancelled_by_policy.",
)
class SkippedFireType:
    id: int
    job_id: strawberry.ID
    fire_at: str
    last_fire_at: str
    count: int
    reason: str
    recorded_at: str

    @classmethod
    def of(cls, skip: SkippedFire) -> SkippedFireType:
        return cls(**skipped_fields(skip))


@strawberry.type(name="SkippedFirePage")
class SkippedFirePageType:
    fires: list[SkippedFireType]
    total: int
    limit: int
    offset: int

    @classmethod
    def of(cls, page: Page[SkippedFire]) -> SkippedFirePageType:
        fires = [SkippedFireType.of(s) for s in page.items]
        return cls(fires=fires, total=page.total, limit=page.limit, offset=page.offset)


JobLogsResult = Annotated[JobLogPageType | JobNotFound | ValidationFailed, strawberry.union("JobLogsResult")]
# PermissionDenied: `Job.logs` and `Job.skippedFires` of a job a mutation answered, for a caller without jobs.read.
LogPageResult = Annotated[JobLogPageType | ValidationFailed | PermissionDenied, strawberry.union("LogPageResult")]
SkippedFiresResult = Annotated[
    SkippedFirePageType | ValidationFailed | PermissionDenied, strawberry.union("SkippedFiresResult")
]


@strawberry.type
class RunQuery:
    @strawberry.field(
        description="Runs of one job, newest first (limit at most 100); `before` an id (keyset), filters as REST's. "
        "An unknown job or a bad argument is an answer: JobNotFound, ValidationFailed."
    )
    async def job_logs(
        self,
        job_id: strawberry.ID,
        limit: int | None = 50,
        offset: int | None = 0,
        before: int | None = None,
        result: str | None = None,
        triggered_by: str | None = None,
        since: str | None = None,
        until: str | None = None,
    ) -> JobLogsResult:
        filters = RunFilter(result=result, triggered_by=triggered_by, since=since, until=until)
        try:
            page = await runs_service.list_for_job(
                job_id=str(job_id), limit=limit, offset=offset, before=before, filters=filters
            )
        except AppError as exc:
            return cast(JobLogsResult, outcome(exc, (JobNotFound, ValidationFailed), job_id))
        return JobLogPageType.of(page)

    @strawberry.field(
        description="Runs of every job, newest first (limit at most 200); `before` an id (keyset), filters as REST's. "
        "A bad argument is an answer: ValidationFailed."
    )
    async def all_job_logs(
        self,
        limit: int | None = 100,
        offset: int | None = 0,
        before: int | None = None,
        result: str | None = None,
        triggered_by: str | None = None,
        since: str | None = None,
        until: str | None = None,
    ) -> LogPageResult:
        filters = RunFilter(result=result, triggered_by=triggered_by, since=since, until=until)
        try:
            page = await runs_service.list_all(limit=limit, offset=offset, before=before, filters=filters)
        except AppError as exc:
            return cast(LogPageResult, outcome(exc, (ValidationFailed,)))
        return JobLogPageType.of(page)
