"""State-change events on one Redis pub/sub channel, for live status subscribers on any instance.

Best effort: an event lost (Redis down a moment) never fails the change it reports; a subscriber reads the state
itself, so the next event carries it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from app.platform import metrics
from app.platform.timefmt import iso_ms, utcnow

CHANNEL = "jg:events"
JOB_DELETED = "job.deleted"
JOB_DISABLED = "job.disabled"
FIRE_BUFFERED = "fire.buffered"
RUN_CANCELLING = "run.cancelling"
RUN_PROGRESS = "run.progress"  # a running run's latest ctx.progress report (app.engine.runlog)
RUN_QUEUED, RUN_STARTED, RUN_FINISHED, FIRE_SKIPPED = "run.queued", "run.started", "run.finished", "fire.skipped"

log = logging.getLogger(__name__)

Event = tuple[str, str, dict[str, Any]]  # (event, job id, data)


def event_json(event: str, job_id: str, at: str | None = None, **data: Any) -> str:
    """An event as it goes on the channel (also for Lua scripts that publish it with the change it reports)."""
    return json.dumps({"event": event, "jobId": job_id, "at": at or iso_ms(utcnow()), **data}, separators=(",", ":"))


def add_to(pipe: Pipeline, events: Sequence[Event]) -> None:
    """Queue the events' publications on a pipeline the caller executes (and then calls `published`)."""
    at = iso_ms(utcnow())
    for event, job_id, data in events:
        pipe.publish(CHANNEL, event_json(event, job_id, at, **data))


def published(events: Sequence[Event]) -> None:
    for event, _, _ in events:
        metrics.event_published(event)


async def publish(redis: Redis, event: str, job_id: str, **data: Any) -> None:
    try:
        await redis.publish(CHANNEL, event_json(event, job_id, **data))
    except RedisError:
        log.warning("could not publish %s for %s", event, job_id, exc_info=True)
        return
    metrics.event_published(event)


async def publish_all(redis: Redis, events: Sequence[Event], also: Sequence[tuple[str, str]] = ()) -> None:
    """Publish events in order, in one round trip; `also`: (channel, message) pairs published after them."""
    if not events and not also:
        return
    try:
        async with redis.pipeline(transaction=False) as pipe:
            add_to(pipe, events)
            for channel, message in also:
                pipe.publish(channel, message)
            await pipe.execute()
    except RedisError:
        log.warning("could not publish %d events", len(events), exc_info=True)
        return
    published(events)
