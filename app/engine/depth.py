"""What waits for a worker: the fires in arq's queue (due or deferred) and the triggers no worker has taken yet.

The API's /metrics reads it through the port (app.engine.queue_depth); a standalone worker's metrics server reads
it from a thread of its own, with a synchronous client.
"""

from __future__ import annotations

from arq.constants import default_queue_name
from redis import Redis as SyncRedis
from redis.asyncio import Redis

from app.adapters import arq as arq_protocol
from app.engine import triggers


async def queue_depth(redis: Redis) -> int:
    return await arq_protocol.queued(redis, default_queue_name) + await triggers.waiting(redis)


def queue_depth_now(client: SyncRedis) -> int:
    """`queue_depth` for a synchronous client."""
    return arq_protocol.queued_now(client, default_queue_name) + int(client.llen(triggers.LIST_KEY))  # type: ignore[arg-type]
