"""Runs that start later, queued in arq: a retry after its backoff, a fire buffered behind the running run.

Each is an arq job deferred to its due time under the id `start:<token>` (arq's deferred jobs with ids: one per
start, whoever enqueues it twice), with the run's token holding the job's lease meanwhile, so that the job stays
`running` and nothing else starts. The wait holds no worker slot: arq keeps the job in its queue and the workers,
woken for its due time (app.engine.waking), start it then through the one start path (app.engine.later_runs).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from arq.connections import ArqRedis

from app.adapters import arq as arq_protocol
from app.engine.waking import wake_channel, wake_workers

FUNCTION = "start_later"
PREFIX = "start:"
# The arq record outlives its due time by this much (a worker that comes back late still finds it).
EXPIRY = timedelta(days=1)


def arq_job_id(token: str) -> str:
    return PREFIX + token


@dataclass(frozen=True, slots=True)
class Later:
    """A run to start at `due`: the `attempt`-th attempt of a trigger (`fire_at` None) or of a fire."""

    job_id: str
    token: str
    triggered_by: str
    fire_at: datetime | None
    attempt: int
    due: datetime | None = None  # when it is queued: when it starts
    # A retry runs with the payload its first attempt had (a trigger's own, say); None: the job's when it starts.
    payload: dict[str, Any] | None = None

    def args(self) -> tuple[str, str, str, str | None, int, dict[str, Any] | None]:
        fire = self.fire_at.isoformat() if self.fire_at is not None else None
        return (self.job_id, self.token, self.triggered_by, fire, self.attempt, self.payload)

    @classmethod
    def of_args(cls, args: Sequence[object]) -> Later:
        # Five arguments: queued by a release before run payloads; it starts with the job's payload.
        job_id, token, triggered_by, fire, attempt, payload = (*args, None) if len(args) == 5 else args
        return cls(
            job_id=str(job_id),
            token=str(token),
            triggered_by=str(triggered_by),
            fire_at=datetime.fromisoformat(str(fire)) if fire is not None else None,
            attempt=int(str(attempt)),
            payload=dict(payload) if isinstance(payload, dict) else None,
        )


async def enqueue(redis: ArqRedis, starts: Sequence[Later]) -> None:
    """Queue the starts in one round trip and wake the workers for the earliest."""
    if not starts:
        return
    now_ms = int(time.time() * 1000)
    deferred = []
    for start in starts:
        assert start.due is not None, "a start is queued for a time"
        score = int(start.due.timestamp() * 1000)
        expires_ms = max(score - now_ms, 0) + int(EXPIRY.total_seconds() * 1000)
        deferred.append(arq_protocol.Deferred(arq_job_id(start.token), FUNCTION, start.args(), score, expires_ms))
    lone = len(deferred) == 1
    channel = wake_channel(redis.default_queue_name) if lone else None
    added = await arq_protocol.enqueue_unless_present(redis, deferred, announce_on=channel)
    if not lone and any(added):
        await wake_workers(redis, min(d.score_ms for d in deferred))


async def take_back(redis: ArqRedis, token: str) -> Later | None:
    """Take a queued start out of arq's queue before any worker has it; None when there is none to take."""
    args = await arq_protocol.withdraw(redis, arq_job_id(token))
    return None if args is None else Later.of_args(args)
