"""GraphQL for runs: log pages, one run with what it said, its log lines read or followed live (`runLog`)."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Annotated, cast

import strawberry
from strawberry.scalars import JSON

from app.api.graphql_errors import to_graphql
from app.api.graphql_outcomes import JobNotFound, PermissionDenied, ValidationFailed, outcome
from app.data.runs import Run
from app.data.skipped_fires import SkippedFire
from app.engine import Line
from app.platform.errors import AppError, Invalid, NotFound
from app.platform.pagination import Page
from app.runs import service as runs_service
from app.runs.schemas import detail_fields, line_fields, skipped_fields
from app.runs.service import RunFilter


@strawberry.type(name="RunProgress", description="A run's latest ctx.progress report, and when it was made.")
class RunProgressType:
    done: float
    total: float | None
    note: str | None
    at: str


@strawberry.type(name="RunLogLine", description="One line a run's handler logged, numbered from 1 within the run.")
class RunLogLineType:
    run_id: int
    seq: int
    at: str
    level: str = strawberry.field(description="debug, info, warning or error.")
    message: str
    fields: JSON | None = strawberry.field(description="The values the handler logged beside the message.")

    @classmethod
    def of(cls, run_id: int, line: Line) -> RunLogLineType:
        return cls(run_id=run_id, **line_fields(line))


@strawberry.type(name="RunLogPage")
class RunLogPageType:
    run_id: int
    lines: list[RunLogLineType]
    after: int = strawberry.field(description="The next page's `after`: the last line's seq.")
    more: bool = strawberry.field(description="More lines are stored past this page.")
    ended: bool = strawberry.field(description="The run has ended: no line will follow the stored ones.")

    @classmethod
    def of(cls, page: runs_service.LogPage) -> RunLogPageType:
        lines = [RunLogLineType.of(page.run_id, line) for line in page.lines]
        return cls(run_id=page.run_id, lines=lines, after=page.after, more=page.more, ended=page.ended)


RunLogResult = Annotated[RunLogPageType | ValidationFailed | PermissionDenied, strawberry.union("RunLogResult")]


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
    output: JSON | None = strawberry.field(description="The JSON object the handler returned, if it returned one.")
    progress: RunProgressType | None = strawberry.field(description="The handler's latest progress report.")
    error_type: str | None = strawberry.field(description="A failed run's exception type (`httpx.ConnectError`).")
    traceback: str | None = strawberry.field(
        description="A failed run's traceback: the frames of the handler's code, not the framework's."
    )

    @classmethod
    def of(cls, run: Run) -> JobLogType:
        fields = detail_fields(run)
        progress = fields.pop("progress")
        return cls(**fields, progress=None if progress is None else RunProgressType(**progress))

    @strawberry.field(
        description="The run's log lines past `after` (a seq; default 0), in order, `limit` of them (default 100, at "
        "most 1,000). A bad argument: ValidationFailed."
    )
    async def log(self, info: strawberry.Info, after: int | None = 0, limit: int | None = 100) -> RunLogResult:
        try:
            info.context.require("runLog")
            page = await runs_service.log_page(run_id=self.id, after=after, limit=limit)
        except AppError as exc:
            return cast(RunLogResult, outcome(exc, (ValidationFailed, PermissionDenied)))
        return RunLogPageType.of(page)


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
    next_before: int | None = strawberry.field(
        description="`before` of the next page (keyset: the same cost at any depth); null on the last page."
    )

    @classmethod
    def of(cls, page: Page[SkippedFire]) -> SkippedFirePageType:
        fires = [SkippedFireType.of(s) for s in page.items]
        return cls(fires=fires, total=page.total, limit=page.limit, offset=page.offset, next_before=page.next_before)


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

    @strawberry.field(description="One run with what it said, or null when there is none with this id.")
    async def run(self, id: strawberry.ID) -> JobLogType | None:
        try:
            return JobLogType.of(await runs_service.get_run(run_id=str(id)))
        except (NotFound, Invalid):
            return None


@strawberry.type
class RunSubscription:
    @strawberry.subscription(
        description="The run's log lines past `after` (the seq of the last line the client has; default 0): those "
        "already written, then each as it is written, on any instance; each once, in order. Ends when the run has "
        "ended and its last line was sent, or when the caller's token expires. Reconnect with the last seq seen."
    )
    async def run_log(
        self, info: strawberry.Info, run_id: strawberry.ID, after: int | None = 0
    ) -> AsyncGenerator[RunLogLineType, None]:
        ctx = info.context
        principal = ctx.subscriber("runLog")
        try:
            follow = runs_service.follow_log(ctx.log_feed, run_id=str(run_id), after=after, until=principal.expires_at)
            async with aclosing(follow) as batches:
                async for batch in batches:
                    for line in batch:
                        yield RunLogLineType.of(int(run_id), line)
        except AppError as exc:
            # Raised by the source stream, outside the AppErrors extension's reach: code it here.
            raise to_graphql(exc) from exc
