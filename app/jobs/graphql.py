"""GraphQL for jobs: queries, mutations and the live `jobStatus` and `jobDeleted` subscriptions."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator

import strawberry
from strawberry.dataloader import DataLoader
from strawberry.scalars import JSON

from app.api.graphql_errors import to_graphql
from app.api.live import Hub
from app.data.runs import Run
from app.jobs import service as jobs_service
from app.jobs.schemas import job_fields
from app.jobs.service import JobState
from app.platform.errors import AppError
from app.platform.pagination import Page
from app.runs import service as runs_service
from app.runs.graphql import JobLogPageType

LogKey = tuple[str, int | None, int | None]


@strawberry.type(name="Job", description="The REST job object, field for field, plus its recent runs.")
class JobType:
    id: strawberry.ID
    name: str
    description: str
    enabled: bool
    running: bool
    schedule: str
    last_run: str | None
    next_run: str | None
    last_result: str | None
    last_duration: int | None
    type: str
    payload: JSON
    timezone: str | None
    timeout: float | None
    builtin: bool

    @classmethod
    def of(cls, state: JobState) -> JobType:
        return cls(**job_fields(state))

    @strawberry.field(description="This job's runs, newest first; batched across jobs.")
    async def logs(self, info: strawberry.Info, limit: int | None = 50, offset: int | None = 0) -> JobLogPageType:
        # No cache: a websocket's context (and a shared stream's) outlives one execution, and every
        # subscription event or query over it must read the runs as they are now. Batching stays.
        loaders = info.context.loaders
        loader: DataLoader[LogKey, Page[Run]] | None = loaders.get("job_logs")
        if loader is None:
            loader = loaders["job_logs"] = DataLoader(_load_logs, cache=False)
        return JobLogPageType.of(await loader.load((str(self.id), limit, offset)))


async def _load_logs(keys: list[LogKey]) -> list[Page[Run]]:
    """One batch per distinct (limit, offset): a list of 100 jobs costs a constant number of queries."""
    found: dict[LogKey, Page[Run]] = {}
    for limit, offset in {(k[1], k[2]) for k in keys}:
        ids = [k[0] for k in keys if (k[1], k[2]) == (limit, offset)]
        pages = await runs_service.pages_for_jobs(job_ids=ids, limit=limit, offset=offset)
        found.update({(job_id, limit, offset): page for job_id, page in pages.items()})
    return [found[k] for k in keys]


@strawberry.input(name="CreateJobInput", description="Exactly one of interval (Go duration) or schedule.")
class CreateJobInput:
    id: strawberry.ID
    name: str
    type: str
    description: str | None = strawberry.UNSET
    interval: str | None = strawberry.UNSET
    schedule: str | None = strawberry.UNSET
    payload: JSON | None = strawberry.UNSET
    enabled: bool | None = strawberry.UNSET
    timeout: float | None = strawberry.UNSET
    timezone: str | None = strawberry.UNSET


@strawberry.type(name="JobActionResult")
class JobActionResultType:
    success: bool
    message: str
    job: JobType


@strawberry.type
class JobQuery:
    @strawberry.field(description="Every job with its status.")
    async def jobs(self, info: strawberry.Info) -> list[JobType]:
        return [JobType.of(s) for s in await jobs_service.list_jobs(info.context.runtime)]

    @strawberry.field(description="One job, or null when there is none with this id.")
    async def job(self, info: strawberry.Info, id: strawberry.ID) -> JobType | None:
        state = await jobs_service.find(info.context.runtime, job_id=str(id))
        return JobType.of(state) if state else None


@strawberry.type
class JobMutation:
    @strawberry.mutation(description="Enable (schedule the next fire) or disable (remove it) a job.")
    async def update_job(self, info: strawberry.Info, id: strawberry.ID, enabled: bool) -> JobType:
        ctx = info.context
        state = await jobs_service.set_enabled(ctx.runtime, job_id=str(id), enabled=enabled, actor=ctx.admin().actor)
        return JobType.of(state)

    @strawberry.mutation(description="Create a job of a registered type; its first fire is scheduled.")
    async def create_job(self, info: strawberry.Info, input: CreateJobInput) -> JobType:
        ctx = info.context
        # Only what the client sent: an explicit null reaches the same validation as REST's.
        data = {k: v for k, v in vars(input).items() if v is not strawberry.UNSET}
        data["id"] = str(input.id)
        return JobType.of(await jobs_service.create(ctx.runtime, data=data, actor=ctx.admin().actor))

    @strawberry.mutation(description="Delete a job (not a built-in one, not while it runs); its runs stay.")
    async def delete_job(self, info: strawberry.Info, id: strawberry.ID) -> bool:
        ctx = info.context
        await jobs_service.delete(ctx.runtime, job_id=str(id), actor=ctx.admin().actor)
        return True

    @strawberry.mutation(description="Start the job's schedule.")
    async def start_job(self, info: strawberry.Info, id: strawberry.ID) -> JobActionResultType:
        ctx = info.context
        state = await jobs_service.start(ctx.runtime, job_id=str(id), actor=ctx.admin().actor)
        return JobActionResultType(success=True, message="Job started successfully", job=JobType.of(state))

    @strawberry.mutation(description="Stop the job's schedule.")
    async def stop_job(self, info: strawberry.Info, id: strawberry.ID) -> JobActionResultType:
        ctx = info.context
        state = await jobs_service.stop(ctx.runtime, job_id=str(id), actor=ctx.admin().actor)
        return JobActionResultType(success=True, message="Job stopped successfully", job=JobType.of(state))

    @strawberry.mutation(description="Run the job now; CONFLICT while it is running.")
    async def trigger_job(self, info: strawberry.Info, id: strawberry.ID) -> JobActionResultType:
        ctx = info.context
        await runs_service.trigger(ctx.runtime, job_id=str(id), actor=ctx.admin().actor)
        state = await jobs_service.get(ctx.runtime, job_id=str(id))
        return JobActionResultType(success=True, message="Job triggered successfully", job=JobType.of(state))


@strawberry.type
class JobSubscription:
    @strawberry.subscription(
        description="The job's state now, then on every change; without id, every job's changes. "
        "Ends when the watched job is deleted or the caller's token expires."
    )
    async def job_status(
        self,
        info: strawberry.Info,
        id: strawberry.ID | None = None,
    ) -> AsyncGenerator[JobType, None]:
        ctx = info.context
        principal = ctx.admin()
        hub: Hub = ctx.hub
        job_id = str(id) if id is not None else None
        box = hub.open(job_id)
        try:
            if job_id is not None:
                try:
                    state = await jobs_service.get(ctx.runtime, job_id=job_id)
                except AppError as exc:
                    # Raised by the source stream, outside the AppErrors extension's reach: code it here.
                    raise to_graphql(exc) from exc
                ctx.stream_job_id = job_id
                yield JobType.of(state)
            # Nothing is delivered past the token's expiry (the connection is closed then, too).
            while (remaining := principal.expires_at - time.time()) > 0:
                change = await box.next_change(timeout=min(remaining, 60.0))
                if change is None:
                    continue
                if change.state is None:
                    if job_id is not None:
                        return  # the watched job was deleted: end the stream cleanly
                    continue
                assert isinstance(change.state, JobState)
                ctx.stream_job_id = change.job_id
                yield JobType.of(change.state)
        finally:
            hub.close(box)

    @strawberry.subscription(
        description="The id of every job deleted from now on (`jobStatus` without an id cannot say it: its "
        "items are jobs). Ends when the caller's token expires."
    )
    async def job_deleted(self, info: strawberry.Info) -> AsyncGenerator[strawberry.ID, None]:
        ctx = info.context
        principal = ctx.admin()
        hub: Hub = ctx.hub
        box = hub.open(None, deletions_only=True)
        try:
            while (remaining := principal.expires_at - time.time()) > 0:
                change = await box.next_change(timeout=min(remaining, 60.0))
                if change is not None:
                    yield strawberry.ID(change.job_id)
        finally:
            hub.close(box)
