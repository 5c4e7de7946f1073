"""GraphQL for the activity (audit) log."""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncGenerator
from typing import Annotated, cast

import strawberry
from strawberry.scalars import JSON

from app.activity import service as activity_service
from app.activity.schemas import activity_fields
from app.api.graphql_errors import to_graphql
from app.api.graphql_outcomes import ValidationFailed, outcome
from app.api.live import Hub
from app.data.activity import Activity
from app.platform.errors import AppError


@strawberry.type(name="Activity")
class ActivityType:
    id: int
    event: str
    job_id: strawberry.ID | None
    actor: str
    details: JSON
    created_at: str
    request_id: str | None = strawberry.field(description="The X-Request-ID of the request that made the change.")
    client_address: str | None = strawberry.field(description="The address of the client that made the change.")

    @classmethod
    def of(cls, entry: Activity) -> ActivityType:
        return cls(**activity_fields(entry))


@strawberry.type(name="ActivityPage")
class ActivityPageType:
    logs: list[ActivityType]
    total: int
    limit: int
    offset: int
    next_before: int | None = strawberry.field(description="`before` of the next page; null on the last page.")


ActivityResult = Annotated[ActivityPageType | ValidationFailed, strawberry.union("ActivityResult")]


@strawberry.type
class ActivityQuery:
    @strawberry.field(
        description="The audit log, newest first (limit at most 200), filtered as REST's. A bad argument is an "
        "answer: ValidationFailed."
    )
    async def activity(
        self,
        limit: int | None = 50,
        offset: int | None = 0,
        event: str | None = None,
        job_id: strawberry.ID | None = None,
        actor: str | None = None,
        since: str | None = None,
        until: str | None = None,
        before: int | None = None,
    ) -> ActivityResult:
        try:
            page = await activity_service.list_entries(
                limit=limit,
                offset=offset,
                event=event,
                job_id=str(job_id) if job_id is not None else None,
                actor=actor,
                since=since,
                until=until,
                before=before,
            )
        except AppError as exc:
            return cast(ActivityResult, outcome(exc, (ValidationFailed,)))
        return ActivityPageType(
            logs=[ActivityType.of(a) for a in page.items],
            total=page.total,
            limit=page.limit,
            offset=page.offset,
            next_before=page.next_before,
        )


# How often a live audit view looks for entries no event announced (an engine's auto-pause, say).
ACTIVITY_POLL_SECONDS = 2.0
# Ids below the newest seen that are looked at again: a PostgreSQL transaction can commit an entry after one
# with a higher id, and the view must not miss it.
ACTIVITY_LOOKBACK = 100


@strawberry.type
class ActivitySubscription:
    @strawberry.subscription(
        description="Each audit entry from now on, oldest first, filtered as `activity` (`events`: any of these). "
        "Ends when the caller's token expires."
    )
    async def activity_added(
        self,
        info: strawberry.Info,
        # Not `event` as on `activity`: strawberry resolves each item of a subscription with `event` as a keyword.
        events: list[str] | None = None,
        job_id: strawberry.ID | None = None,
        actor: str | None = None,
    ) -> AsyncGenerator[ActivityType, None]:
        ctx = info.context
        principal = ctx.subscriber("activityAdded")
        hub: Hub = ctx.hub
        wanted = functools.partial(
            activity_service.added_after, events=events, job_id=str(job_id) if job_id is not None else None, actor=actor
        )
        # Wakes on every job change any instance announces (each management operation announces one after its
        # commit), and every ACTIVITY_POLL_SECONDS for what none announced; the table is the truth.
        box = hub.open(None)
        try:
            try:
                newest = await activity_service.latest_id()
                await wanted(newest)  # bad filters fail now, not at the first entry
            except AppError as exc:
                raise to_graphql(exc) from exc
            seen: set[int] = set()
            while (remaining := principal.expires_at - time.time()) > 0:
                await box.next_change(timeout=min(remaining, ACTIVITY_POLL_SECONDS))
                while box.pending:  # a wake-up is all this view needs of the changes
                    box.pending.pop()
                floor = max(seen, default=newest) - ACTIVITY_LOOKBACK
                for entry in await wanted(max(floor, newest)):
                    if entry.id not in seen:
                        seen.add(entry.id)
                        yield ActivityType.of(entry)
                if len(seen) > 4 * ACTIVITY_LOOKBACK:
                    top = max(seen)
                    seen = {i for i in seen if i > top - ACTIVITY_LOOKBACK}
        finally:
            hub.close(box)
