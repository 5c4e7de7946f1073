"""GraphQL for jobs: queries, mutations and the live `jobStatus` and `jobDeleted` subscriptions."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from typing import Annotated, Any, cast

import strawberry
from strawberry.dataloader import DataLoader
from strawberry.scalars import JSON

from app.api import idempotency as idempotent
from app.api.graphql_errors import to_graphql
from app.api.graphql_outcomes import (
    AlreadyRunning,
    IdempotencyConflict,
    JobConflict,
    JobNotFound,
    NotRunning,
    PermissionDenied,
    ValidationFailed,
    VersionConflict,
    outcome,
)
from app.api.live import Hub
from app.data.runs import Run
from app.jobs import service as jobs_service
from app.jobs.schemas import job_fields
from app.jobs.service import JobState
from app.platform.errors import AppError
from app.platform.pagination import Page
from app.platform.timefmt import iso_ms
from app.runs import service as runs_service
from app.runs.graphql import JobLogPageType, LogPageResult, RunProgressType, SkippedFirePageType, SkippedFiresResult

LogKey = tuple[str, int | None, int | None, int | None]  # job, limit, offset, before


@strawberry.type(name="RetryPolicy", description="How often, and how long apart, a failed run is attempted again.")
class RetryPolicyType:
    max_attempts: int
    backoff: str = strawberry.field(description="Go duration before the first retry.")
    max_backoff: str = strawberry.field(description="Go duration no retry waits longer than.")
    multiplier: float
    jitter: float


@strawberry.type(name="CatchUp", description="How late a fire may start, and what runs of fires missed in an outage.")
class CatchUpType:
    window: str
    policy: str


@strawberry.type(name="SkippedFireRef", description="The job's latest fire that did not run, and why.")
class SkippedFireRefType:
    fire_at: str
    reason: str


def _nested(fields: dict[str, Any]) -> dict[str, Any]:
    """The job's object fields as GraphQL types (job_fields gives them as their wire dicts)."""
    retry, catch_up, skipped = fields["retry"], fields["catch_up"], fields["last_skipped_fire"]
    return {
        **fields,
        "retry": None if retry is None else RetryPolicyType(**_snaked(retry)),
        "catch_up": CatchUpType(**catch_up),
        "last_skipped_fire": None if skipped is None else SkippedFireRefType(**_snaked(skipped)),
    }


def _snaked(wire: dict[str, Any]) -> dict[str, Any]:
    return {"".join("_" + c.lower() if c.isupper() else c for c in k): v for k, v in wire.items()}


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
    retry: RetryPolicyType | None
    overlap: str
    catch_up: CatchUpType
    pause_after_failures: int | None
    consecutive_failures: int
    cancelling: bool = strawberry.field(description="A cancel was asked and the handler has not stopped yet.")
    last_skipped_fire: SkippedFireRefType | None
    version: int = strawberry.field(
        description="Bumped by every change of the job's settings (not by its runs); updateJob's expectedVersion."
    )
    # The running run's progress as the live event that produced this state reported it (else read when asked).
    reported_progress: strawberry.Private[dict[str, Any] | None] = None

    @classmethod
    def of(cls, state: JobState) -> JobType:
        return cls(**_nested(job_fields(state)), reported_progress=state.progress)

    @strawberry.field(
        description="The running run's latest ctx.progress report; null while nothing runs or it reported none."
    )
    async def progress(self, info: strawberry.Info) -> RunProgressType | None:
        if not self.running:
            return None
        report = self.reported_progress
        if report is None:
            loaders = info.context.loaders
            loader: DataLoader[str, dict[str, Any] | None] | None = loaders.get("run_progress")
            if loader is None:
                # No cache, as for `logs`: a subscription's context outlives one execution.
                loader = loaders["run_progress"] = DataLoader(runs_service.progress_of_running, cache=False)
            report = await loader.load(str(self.id))
        return None if report is None else RunProgressType(**report)

    @strawberry.field(
        description="This job's runs, newest first; batched across jobs. A bad argument: ValidationFailed."
    )
    async def logs(
        self, info: strawberry.Info, limit: int | None = 50, offset: int | None = 0, before: int | None = None
    ) -> LogPageResult:
        try:
            # A job reached from a mutation's answer is read by a caller who may only change it: runs need jobs.read.
            info.context.require("jobLogs")
            # Checked before the batch: one job's bad arguments must not fail the others'.
            runs_service.page_request(limit=limit, offset=offset, before=before)
        except AppError as exc:
            return cast(LogPageResult, outcome(exc, (ValidationFailed, PermissionDenied)))
        # No cache: a websocket's context (and a shared stream's) outlives one execution, and every
        # subscription event or query over it must read the runs as they are now. Batching stays.
        loaders = info.context.loaders
        loader: DataLoader[LogKey, Page[Run]] | None = loaders.get("job_logs")
        if loader is None:
            loader = loaders["job_logs"] = DataLoader(_load_logs, cache=False)
        return JobLogPageType.of(await loader.load((str(self.id), limit, offset, before)))

    @strawberry.field(
        description="Its pending fire, then its schedule's next ones (count at most 100); empty while stopped."
    )
    async def next_fires(self, info: strawberry.Info, count: int | None = 10) -> NextFiresResult:
        ctx = info.context
        try:
            ctx.require("nextFires")
            state = await jobs_service.get(ctx.runtime, job_id=str(self.id))
            fires = jobs_service.next_fires(ctx.runtime, state, count)
        except AppError as exc:
            return cast(NextFiresResult, outcome(exc, (ValidationFailed, PermissionDenied)))
        return NextFiresType(fires=[iso_ms(f) or "" for f in fires])

    @strawberry.field(description="This job's scheduled fires that did not run, with the reason; newest first.")
    async def skipped_fires(
        self, info: strawberry.Info, limit: int | None = 50, offset: int | None = 0, before: int | None = None
    ) -> SkippedFiresResult:
        try:
            info.context.require("skippedFires")
            page = await runs_service.list_skipped(job_id=str(self.id), limit=limit, offset=offset, before=before)
        except AppError as exc:
            return cast(SkippedFiresResult, outcome(exc, (ValidationFailed, PermissionDenied)))
        return SkippedFirePageType.of(page)


@strawberry.type(name="NextFires", description="A job's next fires: its pending one first.")
class NextFiresType:
    fires: list[str]


NextFiresResult = Annotated[NextFiresType | ValidationFailed | PermissionDenied, strawberry.union("NextFiresResult")]


async def _load_logs(keys: list[LogKey]) -> list[Page[Run]]:
    """One batch per distinct (limit, offset, before): a list of 100 jobs costs a constant number of queries."""
    found: dict[LogKey, Page[Run]] = {}
    for limit, offset, before in {k[1:] for k in keys}:
        ids = [k[0] for k in keys if k[1:] == (limit, offset, before)]
        pages = await runs_service.pages_for_jobs(job_ids=ids, limit=limit, offset=offset, before=before)
        found.update({(job_id, limit, offset, before): page for job_id, page in pages.items()})
    return [found[k] for k in keys]


@strawberry.input(name="RetryPolicyInput", description="`retry` of a job; durations are Go durations.")
class RetryPolicyInput:
    max_attempts: int
    backoff: str | None = strawberry.UNSET
    max_backoff: str | None = strawberry.UNSET
    multiplier: float | None = strawberry.UNSET
    jitter: float | None = strawberry.UNSET


@strawberry.input(name="CatchUpInput", description="`catchUp` of a job: window (Go duration), policy latest or none.")
class CatchUpInput:
    window: str | None = strawberry.UNSET
    policy: str | None = strawberry.UNSET


@strawberry.input(
    name="UpdateJobInput",
    description="The fields to change, validated as on creation; at most one of interval or schedule. A built-in "
    "job's name, description and payload are not editable.",
)
class UpdateJobInput:
    name: str | None = strawberry.UNSET
    description: str | None = strawberry.UNSET
    interval: str | None = strawberry.UNSET
    schedule: str | None = strawberry.UNSET
    timezone: str | None = strawberry.UNSET
    payload: JSON | None = strawberry.UNSET
    timeout: float | None = strawberry.UNSET
    enabled: bool | None = strawberry.UNSET
    retry: RetryPolicyInput | None = strawberry.UNSET
    overlap: str | None = strawberry.UNSET
    catch_up: CatchUpInput | None = strawberry.UNSET
    pause_after_failures: int | None = strawberry.UNSET


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
    retry: RetryPolicyInput | None = strawberry.UNSET
    overlap: str | None = strawberry.UNSET
    catch_up: CatchUpInput | None = strawberry.UNSET
    pause_after_failures: int | None = strawberry.UNSET


def _sent(obj: object) -> dict[str, Any]:
    """An input's fields the client sent, by their wire names: an explicit null reaches the same validation as
    REST's, and a nested input becomes the object REST would have received."""
    sent: dict[str, Any] = {}
    for name, value in vars(obj).items():
        if value is strawberry.UNSET:
            continue
        key = name.split("_")[0] + "".join(part.title() for part in name.split("_")[1:])
        sent[key] = _sent(value) if isinstance(value, RetryPolicyInput | CatchUpInput) else value
    return sent


@strawberry.type(name="JobActionResult")
class JobActionResultType:
    success: bool
    message: str
    job: JobType


@strawberry.type(name="SchedulePreview", description="A schedule's next fires, as a job with it would have them.")
class SchedulePreviewType:
    schedule: str
    timezone: str
    fires: list[str]


SchedulePreviewResult = Annotated[SchedulePreviewType | ValidationFailed, strawberry.union("SchedulePreviewResult")]


@strawberry.type
class JobQuery:
    @strawberry.field(
        description="The next `count` (at most 100) fires of exactly one of schedule or interval, in timezone; "
        "BAD_USER_INPUT as creating a job with it would get."
    )
    def schedule_preview(
        self,
        info: strawberry.Info,
        schedule: str | None = strawberry.UNSET,
        interval: str | None = strawberry.UNSET,
        timezone: str | None = strawberry.UNSET,
        count: int | None = strawberry.UNSET,
    ) -> SchedulePreviewResult:
        sent = {"schedule": schedule, "interval": interval, "timezone": timezone, "count": count}
        # An explicit null is left out, as REST's JSON null of an optional field (count: the default).
        data = {k: v for k, v in sent.items() if v is not strawberry.UNSET and v is not None}
        try:
            preview = jobs_service.preview(info.context.runtime, data=data)
        except AppError as exc:
            return cast(SchedulePreviewResult, outcome(exc, (ValidationFailed,)))
        return SchedulePreviewType(
            schedule=preview.schedule, timezone=preview.timezone, fires=[iso_ms(f) or "" for f in preview.fires]
        )

    @strawberry.field(description="Every job with its status.")
    async def jobs(self, info: strawberry.Info) -> list[JobType]:
        return [JobType.of(s) for s in await jobs_service.list_jobs(info.context.runtime)]

    @strawberry.field(description="One job, or null when there is none with this id (or no job could have it).")
    async def job(self, info: strawberry.Info, id: strawberry.ID) -> JobType | None:
        if not jobs_service.is_job_id(str(id)):
            return None  # no job can have this id
        state = await jobs_service.find(info.context.runtime, job_id=str(id))
        return JobType.of(state) if state else None


@strawberry.type(name="JobDeleted", description="The job was deleted; its runs stay in the logs.")
class JobDeletedType:
    id: strawberry.ID


UpdateJobResult = Annotated[
    JobType | JobNotFound | ValidationFailed | PermissionDenied | VersionConflict | JobConflict,
    strawberry.union("UpdateJobResult"),
]
CreateJobResult = Annotated[
    # JobNotFound: a replayed create whose job was deleted since.
    JobType | ValidationFailed | PermissionDenied | JobConflict | IdempotencyConflict | JobNotFound,
    strawberry.union("CreateJobResult"),
]
DeleteJobResult = Annotated[
    JobDeletedType | JobNotFound | ValidationFailed | PermissionDenied | AlreadyRunning | JobConflict,
    strawberry.union("DeleteJobResult"),
]
ScheduleJobResult = Annotated[
    JobActionResultType | JobNotFound | ValidationFailed | PermissionDenied, strawberry.union("ScheduleJobResult")
]
TriggerJobResult = Annotated[
    JobActionResultType | JobNotFound | ValidationFailed | PermissionDenied | AlreadyRunning | IdempotencyConflict,
    strawberry.union("TriggerJobResult"),
]
CancelJobRunResult = Annotated[
    JobActionResultType | JobNotFound | ValidationFailed | PermissionDenied | NotRunning,
    strawberry.union("CancelJobRunResult"),
]


@strawberry.type
class JobMutation:
    """Each mutation answers its success type or one of the UserError types its union lists (app.api.
    graphql_outcomes); the permission table is checked here, so that a refusal is data too."""

    @strawberry.mutation(
        description="Enable (schedule the next fire) or disable (remove it) a job with `enabled`, or edit it with "
        "`input` (both: `enabled` joins the input). With `expectedVersion`, VersionConflict once the job's version "
        "is another."
    )
    async def update_job(
        self,
        info: strawberry.Info,
        id: strawberry.ID,
        enabled: bool | None = None,
        input: UpdateJobInput | None = None,
        expected_version: int | None = None,
    ) -> UpdateJobResult:
        ctx = info.context
        data = _sent(input) if input is not None else {}
        if enabled is not None:
            data["enabled"] = enabled
        try:
            user = ctx.require("updateJob")
            state = await jobs_service.update(
                ctx.runtime, job_id=str(id), data=data, actor=user.actor, expected_version=expected_version
            )
        except AppError as exc:
            return cast(
                UpdateJobResult,
                outcome(exc, (JobNotFound, ValidationFailed, PermissionDenied, VersionConflict, JobConflict), id),
            )
        return JobType.of(state)

    @strawberry.mutation(
        description="Create a job of a registered type; its first fire is scheduled. With `idempotencyKey`, the same "
        "key and input within 24 h create nothing more and answer the job created first; the key with another "
        "input is an IdempotencyConflict (idempotency_key_reused)."
    )
    async def create_job(
        self, info: strawberry.Info, input: CreateJobInput, idempotency_key: str | None = None
    ) -> CreateJobResult:
        ctx = info.context
        data = _sent(input)
        data["id"] = str(input.id)
        try:
            user = ctx.require("createJob")

            async def create() -> str:
                return (await jobs_service.create(ctx.runtime, data=data, actor=user.actor)).job.id

            job_id = await idempotent.once(ctx.runtime, user, idempotency_key, ("createJob", data), create)
            state = await jobs_service.get(ctx.runtime, job_id=job_id)
        except AppError as exc:
            allowed = (ValidationFailed, PermissionDenied, JobConflict, IdempotencyConflict, JobNotFound)
            return cast(CreateJobResult, outcome(exc, allowed, data["id"]))
        return JobType.of(state)

    @strawberry.mutation(description="Delete a job (not a built-in one, not while it runs); its runs stay.")
    async def delete_job(self, info: strawberry.Info, id: strawberry.ID) -> DeleteJobResult:
        ctx = info.context
        try:
            user = ctx.require("deleteJob")
            await jobs_service.delete(ctx.runtime, job_id=str(id), actor=user.actor)
        except AppError as exc:
            return cast(
                DeleteJobResult,
                outcome(exc, (JobNotFound, ValidationFailed, PermissionDenied, AlreadyRunning, JobConflict), id),
            )
        return JobDeletedType(id=id)

    @strawberry.mutation(description="Start the job's schedule.")
    async def start_job(self, info: strawberry.Info, id: strawberry.ID) -> ScheduleJobResult:
        return await _schedule_action(info, id, "startJob", "Job started successfully")

    @strawberry.mutation(description="Stop the job's schedule.")
    async def stop_job(self, info: strawberry.Info, id: strawberry.ID) -> ScheduleJobResult:
        return await _schedule_action(info, id, "stopJob", "Job stopped successfully")

    @strawberry.mutation(
        description="Run the job now (with `payload` instead of the job's, validated by its type's schema); "
        "AlreadyRunning while it runs. With `idempotencyKey`, a retry within 24 h runs nothing more."
    )
    async def trigger_job(
        self,
        info: strawberry.Info,
        id: strawberry.ID,
        payload: JSON | None = strawberry.UNSET,
        idempotency_key: str | None = None,
    ) -> TriggerJobResult:
        ctx = info.context
        given = {} if payload is strawberry.UNSET else {"payload": payload}
        try:
            user = ctx.require("triggerJob")

            async def trigger() -> str:
                await runs_service.trigger(ctx.runtime, job_id=str(id), actor=user.actor, body=given or None)
                return str(id)

            await idempotent.once(ctx.runtime, user, idempotency_key, ("triggerJob", str(id), given), trigger)
            state = await jobs_service.get(ctx.runtime, job_id=str(id))
        except AppError as exc:
            allowed = (JobNotFound, ValidationFailed, PermissionDenied, AlreadyRunning, IdempotencyConflict)
            return cast(TriggerJobResult, outcome(exc, allowed, id))
        return JobActionResultType(success=True, message="Job triggered successfully", job=JobType.of(state))

    @strawberry.mutation(description="Cancel the job's current run wherever it executes; NotRunning when none runs.")
    async def cancel_job_run(self, info: strawberry.Info, id: strawberry.ID) -> CancelJobRunResult:
        ctx = info.context
        try:
            user = ctx.require("cancelJobRun")
            await runs_service.cancel(ctx.runtime, job_id=str(id), actor=user.actor)
            state = await jobs_service.get(ctx.runtime, job_id=str(id))
        except AppError as exc:
            return cast(
                CancelJobRunResult, outcome(exc, (JobNotFound, ValidationFailed, PermissionDenied, NotRunning), id)
            )
        return JobActionResultType(success=True, message="Run cancelled", job=JobType.of(state))


async def _schedule_action(info: strawberry.Info, id: strawberry.ID, operation: str, message: str) -> ScheduleJobResult:
    ctx = info.context
    service = jobs_service.start if operation == "startJob" else jobs_service.stop
    try:
        user = ctx.require(operation)
        state = await service(ctx.runtime, job_id=str(id), actor=user.actor)
    except AppError as exc:
        return cast(ScheduleJobResult, outcome(exc, (JobNotFound, ValidationFailed, PermissionDenied), id))
    return JobActionResultType(success=True, message=message, job=JobType.of(state))


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
        principal = ctx.subscriber("jobStatus")
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
        principal = ctx.subscriber("jobDeleted")
        hub: Hub = ctx.hub
        box = hub.open(None, deletions_only=True)
        try:
            while (remaining := principal.expires_at - time.time()) > 0:
                change = await box.next_change(timeout=min(remaining, 60.0))
                if change is not None:
                    yield strawberry.ID(change.job_id)
        finally:
            hub.close(box)
