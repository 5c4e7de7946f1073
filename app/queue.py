"""Every arq enqueue goes through here, so that no route or service touches arq's keys."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from arq.connections import ArqRedis
from arq.constants import default_queue_name, in_progress_key_prefix, job_key_prefix, retry_key_prefix

RUN_FUNCTION = "run_job"
FIRE_FUNCTION = "fire_job"
FIRE_EXPIRY = timedelta(days=1)


def run_id(token: str) -> str:
    return f"run:{token}"


def fire_id(job_id: str, fire_at: datetime) -> str:
    """Deterministic per (job, fire time): every reconciler enqueues the same id, arq keeps one."""
    return f"fire:{job_id}:{int(fire_at.timestamp() * 1000)}"


async def enqueue_run(redis: ArqRedis, *, job_id: str, token: str, triggered_by: str) -> None:
    await redis.enqueue_job(RUN_FUNCTION, job_id, token, triggered_by, _job_id=run_id(token))


async def enqueue_fire(redis: ArqRedis, *, job_id: str, fire_at: datetime) -> bool:
    """Enqueue the fire deferred to its time; False when arq already holds that id."""
    # arq's default expiry is "defer time + 1 day" measured from now, which goes negative (and Redis
    # rejects it) for a catch-up fire more than a day old; count the day from whichever is later.
    ahead = max(fire_at - datetime.now(UTC), timedelta(0))
    job = await redis.enqueue_job(
        FIRE_FUNCTION,
        job_id,
        fire_at.isoformat(),
        _job_id=fire_id(job_id, fire_at),
        _defer_until=fire_at,
        _expires=ahead + FIRE_EXPIRY,
    )
    return job is not None


async def fire_pending(redis: ArqRedis, *, job_id: str, fire_at: datetime) -> bool:
    """Whether arq still holds this fire (queued or running)."""
    return bool(await redis.exists(job_key_prefix + fire_id(job_id, fire_at)))


async def cancel_fire(redis: ArqRedis, *, job_id: str, fire_at: datetime) -> None:
    """Drop a fire that has not started. A fire that slips through still checks the job before it runs."""
    await forget(redis, fire_id(job_id, fire_at))


async def forget(redis: ArqRedis, arq_id: str) -> None:
    """Remove every trace of an arq job. A job whose worker was killed otherwise stays at the head of
    the queue, marked in progress for arq's whole timeout, and enough of them starve every worker."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.zrem(default_queue_name, arq_id)
        pipe.delete(job_key_prefix + arq_id, in_progress_key_prefix + arq_id, retry_key_prefix + arq_id)
        await pipe.execute()
