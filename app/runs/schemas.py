from __future__ import annotations

from pydantic import BaseModel

from app.pagination import Page
from app.runs.models import Run
from app.timefmt import iso_ms


class RunOut(BaseModel):
    """One log entry. While a run is in progress `completedAt`, `duration` and `result` are null."""

    id: int
    jobId: str
    startedAt: str | None
    completedAt: str | None
    duration: int | None
    result: str | None
    triggeredBy: str
    details: str | None

    @classmethod
    def of(cls, run: Run) -> RunOut:
        return cls(
            id=run.id,
            jobId=run.job_id,
            startedAt=iso_ms(run.started_at),
            completedAt=iso_ms(run.completed_at),
            duration=run.duration_ms,
            result=run.result,
            triggeredBy=run.triggered_by,
            details=run.details,
        )


class RunPage(BaseModel):
    logs: list[RunOut]
    total: int
    limit: int
    offset: int

    @classmethod
    def of(cls, page: Page[Run]) -> RunPage:
        return cls(logs=[RunOut.of(r) for r in page.items], total=page.total, limit=page.limit, offset=page.offset)
