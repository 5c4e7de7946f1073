"""GraphQL for runs: log pages, and trigger now."""

from __future__ import annotations

import strawberry

from app.data.runs import Run
from app.platform.pagination import Page
from app.runs import service as runs_service
from app.runs.schemas import run_fields


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

    @classmethod
    def of(cls, run: Run) -> JobLogType:
        return cls(**run_fields(run))


@strawberry.type(name="JobLogPage")
class JobLogPageType:
    logs: list[JobLogType]
    total: int
    limit: int
    offset: int

    @classmethod
    def of(cls, page: Page[Run]) -> JobLogPageType:
        return cls(logs=[JobLogType.of(r) for r in page.items], total=page.total, limit=page.limit, offset=page.offset)


@strawberry.type
class RunQuery:
    @strawberry.field(description="Runs of one job, newest first (limit at most 100).")
    async def job_logs(self, job_id: strawberry.ID, limit: int | None = 50, offset: int | None = 0) -> JobLogPageType:
        return JobLogPageType.of(await runs_service.list_for_job(job_id=str(job_id), limit=limit, offset=offset))

    @strawberry.field(description="Runs of every job, newest first (limit at most 200).")
    async def all_job_logs(self, limit: int | None = 100, offset: int | None = 0) -> JobLogPageType:
        return JobLogPageType.of(await runs_service.list_all(limit=limit, offset=offset))
