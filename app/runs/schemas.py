from __future__ import annotations

from typing import Any

from app.api.schemas import CamelModel
from app.data.runs import Run
from app.data.skipped_fires import SkippedFire
from app.engine import Line
from app.platform.pagination import Page
from app.platform.timefmt import iso_ms
from app.runs.service import LogPage


def run_fields(run: Run) -> dict[str, Any]:
    """A log entry's fields; REST and GraphQL both render these."""
    return {
        "id": run.id,
        "job_id": run.job_id,
        "started_at": iso_ms(run.started_at),
        "completed_at": iso_ms(run.completed_at),
        "duration": run.duration_ms,
        "result": run.result,
        "triggered_by": run.triggered_by,
        "details": run.details,
        "attempt": run.attempt,
        "fire_at": iso_ms(run.fire_at),
        "payload": None if run.payload is None else dict(run.payload),
    }


class RunOut(CamelModel):
    """One log entry. While a run is in progress `completedAt`, `duration` and `result` are null."""

    id: int
    job_id: str
    started_at: str | None
    completed_at: str | None
    duration: int | None
    result: str | None
    triggered_by: str
    details: str | None
    attempt: int
    fire_at: str | None
    payload: dict[str, Any] | None


class RunPage(CamelModel):
    logs: list[RunOut]
    total: int
    limit: int
    offset: int
    next_before: int | None  # the `before` of the next page; null on the last one

    @classmethod
    def of(cls, page: Page[Run]) -> RunPage:
        logs = [RunOut(**run_fields(r)) for r in page.items]
        return cls(logs=logs, total=page.total, limit=page.limit, offset=page.offset, next_before=page.next_before)


def skipped_fields(skip: SkippedFire) -> dict[str, Any]:
    """A skipped fire's fields; REST and GraphQL both render these."""
    return {
        "id": skip.id,
        "job_id": skip.job_id,
        "fire_at": iso_ms(skip.fire_at),
        "last_fire_at": iso_ms(skip.last_fire_at),
        "count": skip.count,
        "reason": skip.reason,
        "recorded_at": iso_ms(skip.recorded_at),
    }


class SkippedFireOut(CamelModel):
    """A scheduled fire that did not run (or `count` of them, from `fireAt` to `lastFireAt`), and why."""

    id: int
    job_id: str
    fire_at: str
    last_fire_at: str
    count: int
    reason: str
    recorded_at: str


class SkippedFirePage(CamelModel):
    fires: list[SkippedFireOut]
    total: int
    limit: int
    offset: int
    next_before: int | None  # the `before` of the next page; null on the last one

    @classmethod
    def of(cls, page: Page[SkippedFire]) -> SkippedFirePage:
        fires = [SkippedFireOut(**skipped_fields(s)) for s in page.items]
        return cls(fires=fires, total=page.total, limit=page.limit, offset=page.offset, next_before=page.next_before)


def detail_fields(run: Run) -> dict[str, Any]:
    """One run as `GET /api/runs/{runId}` and GraphQL's `run` show it: its log entry, then what it said."""
    return {
        **run_fields(run),
        "output": None if run.output is None else dict(run.output),
        "progress": None if run.progress is None else dict(run.progress),
        "error_type": run.error_type,
        "traceback": run.traceback,
    }


class RunProgressOut(CamelModel):
    """A run's latest `ctx.progress(done, total, note)` report, and when it was made."""

    done: float
    total: float | None
    note: str | None
    at: str


class RunDetail(RunOut):
    """A run's log entry, then its `output` (the JSON object its handler returned), its latest `progress`, and for a
    failed run the exception's type and the handler's traceback."""

    output: dict[str, Any] | None
    progress: RunProgressOut | None
    error_type: str | None
    traceback: str | None

    @classmethod
    def of(cls, run: Run) -> RunDetail:
        return cls(**detail_fields(run))


def line_fields(line: Line) -> dict[str, Any]:
    return {"seq": line.seq, "at": iso_ms(line.at), "level": line.level, "message": line.message, "fields": line.fields}


class LogLineOut(CamelModel):
    seq: int
    at: str
    level: str
    message: str
    fields: dict[str, Any] | None


class RunLogPage(CamelModel):
    run_id: int
    lines: list[LogLineOut]
    after: int  # the next page's `after`
    more: bool  # more lines are stored past this page
    ended: bool  # the run has ended: no line will follow the stored ones

    @classmethod
    def of(cls, page: LogPage) -> RunLogPage:
        lines = [LogLineOut(**line_fields(line)) for line in page.lines]
        return cls(run_id=page.run_id, lines=lines, after=page.after, more=page.more, ended=page.ended)
