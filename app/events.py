"""State-change events on one Redis pub/sub channel, for live status subscribers on any instance."""

from __future__ import annotations

import json
import logging
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.platform import metrics
from app.platform.timefmt import iso_ms, utcnow

CHANNEL = "jg:events"
JOB_DELETED = "job.deleted"
log = logging.getLogger(__name__)


async def publish(redis: Redis, event: str, job_id: str, **data: Any) -> None:
    """Publish a small JSON event. Best effort: a lost event must never fail the change it reports."""
    message = {"event": event, "jobId": job_id, "at": iso_ms(utcnow()), **data}
    try:
        await redis.publish(CHANNEL, json.dumps(message, separators=(",", ":")))
        metrics.event_published(event)
    except RedisError:
        log.warning("could not publish %s for %s", event, job_id, exc_info=True)
