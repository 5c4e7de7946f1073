"""Every arq enqueue goes through here, so that no route or service touches arq's keys."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from arq.connections import ArqRedis
from arq.constants import (
    default_queue_name,
    in_progress_key_prefix,
    job_key_prefix,
    result_key_prefix,
    retry_key_prefix,
)
from arq.jobs import serialize_job
from arq.utils import timestamp_ms
from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

RUN_FUNCTION = "run_job"
FIRE_FUNCTION = "fire_job"
FIRE_EXPIRY = timedelta(days=1)
WAKE_SUFFIX = ":wake"


def wake_channel(queue_name: str = default_queue_name) -> str:
    """Where enqueuers tell sleeping workers (workers.waking) that a job is due at some time."""
    return queue_name + WAKE_SUFFIX


def decode_wake(data: bytes | str) -> int:
    """The due time (epoch ms) a wake-up carries; 0 (now) when unreadable."""
    try:
        return int(data)
    except (TypeError, ValueError):
        return 0


async def wake_workers(redis: ArqRedis, due: datetime | None = None) -> None:
    """One PUBLISH: idle workers poll at once (or plan for `due`) instead of at their idle cap.

    Best effort: the job is queued already, and a worker that misses this finds it within its cap."""
    try:
        await redis.publish(wake_channel(redis.default_queue_name), int(due.timestamp() * 1000) if due else 0)
    except RedisError:
        log.warning("could not wake the workers; they find the job at their next idle poll", exc_info=True)


def run_id(token: str) -> str:
    return f"run:{token}"


def fire_id(job_id: str, fire_at: datetime) -> str:
    """Deterministic per (job, fire time): every reconciler enqueues the same id, arq keeps one."""
    return f"fire:{job_id}:{int(fire_at.timestamp() * 1000)}"


# A trigger in one round trip: take the job's lease (free, or already ours after a retried call), queue
# arq's job record under the run's fresh id exactly as arq's enqueue_job does, and wake the workers.
# Atomic, so a lease is never left behind without its queued run or the other way round.
_LEASE_AND_ENQUEUE = """
local current = redis.call('GET', KEYS[1])
if current ~= false and current ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('PSETEX', KEYS[2], ARGV[3], ARGV[4])
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[6])
redis.call('PUBLISH', ARGV[7], '0')
return 1
"""


async def lease_and_enqueue_run(
    redis: ArqRedis, *, lease_key: str, lease_ttl: float, job_id: str, token: str, triggered_by: str
) -> bool:
    """Queue a manual run under a new lease; False when the job's lease is someone else's (running)."""
    arq_id = run_id(token)
    now_ms = timestamp_ms()
    record = serialize_job(
        RUN_FUNCTION, (job_id, token, triggered_by), {}, None, now_ms, serializer=redis.job_serializer
    )
    keys = [lease_key, job_key_prefix + arq_id, redis.default_queue_name]
    channel = wake_channel(redis.default_queue_name)
    args: list[Any] = [token, max(1, int(lease_ttl * 1000)), redis.expires_extra_ms, record, now_ms, arq_id, channel]
    return bool(await redis.eval(_LEASE_AND_ENQUEUE, len(keys), *keys, *args))  # type: ignore[misc]


# --- Direct dispatch of manual triggers ------------------------------------------------------------------
# A trigger does not go through arq: the API takes the lease and pushes a ready-to-run message onto a Redis
# list that every worker's consumer (workers.dispatch) waits on in BLPOP, so a trigger costs the worker one
# pop and one lease check before the handler, with no claim protocol and no read of the job. The same
# message is also kept in a sorted set by acceptance time until the run record exists: a worker that dies
# between the pop and that record leaves it there, and a consumer's sweep records it (never silently lost).
DISPATCH_LIST = "jg:dispatch"
DISPATCH_PENDING = "jg:dispatch:pending"


@dataclass(frozen=True, slots=True)
class DirectRun:
    """Everything a worker needs to start the handler: the job as it was when the trigger was accepted.

    `expires_ms`: when its queued lease expires, by Redis's clock (the dispatch script sets it): a consumer that
    knows Redis's clock can tell that a fresh message's lease is still its own without asking
    (workers.redis_clock). Messages of versions before it hold the API's own clock reading of the acceptance
    there, which reads as a lease already expired: those are checked, never trusted.
    """

    job_id: str
    token: str
    type: str
    payload: dict[str, Any]
    timeout: float | None
    triggered_by: str
    expires_ms: int = 0

    def encode_without_time(self) -> bytes:
        """The encoding up to `expires_ms`, which the dispatch script appends with the closing bracket."""
        fields = [self.job_id, self.token, self.type, self.payload, self.timeout, self.triggered_by]
        return json.dumps(fields, separators=(",", ":")).encode()[:-1] + b","

    @classmethod
    def decode(cls, raw: bytes | str) -> DirectRun:
        job_id, token, type_, payload, timeout, triggered_by, expires_ms = json.loads(raw)
        return cls(job_id, token, type_, payload, timeout, triggered_by, int(expires_ms))


# Take the free lease, then queue the message, remember it as pending and publish the `run.queued` event:
# atomic and one round trip, so a lease is never left without its message nor the other way round. The
# message ends with the lease's expiry by Redis's own clock, the clock that expires it. ARGV[6] = 1: the
# caller runs it itself (an API's embedded worker with a free slot), so it is not pushed; the pending entry
# still covers a caller that dies before the run record. A lease already ours is a client retry of a call that
# went through: its message was queued then, unless that call meant to run it itself, whose reply was lost
# and who therefore never did: the workers get it now.
_LEASE_AND_DISPATCH = """
local current = redis.call('GET', KEYS[1])
if current ~= false and current ~= ARGV[1] then
  return 0
end
if current == ARGV[1] and ARGV[6] ~= '1' then
  return ''
end
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
if current == ARGV[1] then
  local left = math.max(redis.call('PTTL', KEYS[1]), 0)  -- the earlier call's lease, not a new one
  local message = ARGV[3] .. string.format('%d', now_ms + left) .. ']'
  redis.call('RPUSH', KEYS[2], message)
  redis.call('ZADD', KEYS[3], now_ms, message)
  return ''
end
local message = ARGV[3] .. string.format('%d', now_ms + tonumber(ARGV[2])) .. ']'
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if ARGV[6] ~= '1' then
  redis.call('RPUSH', KEYS[2], message)
end
redis.call('ZADD', KEYS[3], now_ms, message)
redis.call('PUBLISH', ARGV[4], ARGV[5])
return message
"""


@dataclass(frozen=True, slots=True)
class Dispatched:
    """What `lease_and_dispatch_run` did. `message`: the run's message as queued, when this call took the lease
    (None when an earlier call with the same token had); the caller that asked to run it itself runs it."""

    accepted: bool
    message: bytes | None = None


# The run record exists: the message is no longer at risk, and the run has started.
_STARTED = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
"""


async def lease_and_dispatch_run(
    redis: Redis,
    *,
    lease_key: str,
    lease_ttl: float,
    run: DirectRun,
    channel: str,
    event: str,
    run_here: bool = False,
) -> Dispatched:
    """Queue a manual run for the workers' consumers under a new lease (`run_here`: for the caller to run
    itself, not queued); not accepted when the job's lease is someone else's (running). `event` is published
    on `channel` with it."""
    keys = [lease_key, DISPATCH_LIST, DISPATCH_PENDING]
    args: list[Any] = [
        run.token,
        max(1, int(lease_ttl * 1000)),
        run.encode_without_time(),
        channel,
        event,
        "1" if run_here else "0",
    ]
    reply = await redis.eval(_LEASE_AND_DISPATCH, len(keys), *keys, *args)  # type: ignore[misc]
    if reply == 0:
        return Dispatched(accepted=False)
    return Dispatched(accepted=True, message=bytes(reply) or None)


async def direct_run_started(redis: Redis, raw: bytes, *, channel: str, event: str) -> None:
    """The popped message `raw` has its run record: forget it as pending and publish `event`."""
    await redis.eval(_STARTED, 1, DISPATCH_PENDING, raw, channel, event)  # type: ignore[misc, arg-type]


async def pop_direct_run(redis: Redis, timeout: int) -> bytes | None:
    """The oldest queued message, waiting up to `timeout` seconds for one."""
    popped = await redis.blpop([DISPATCH_LIST], timeout=timeout)  # type: ignore[misc]
    return None if popped is None else popped[1]


async def return_direct_run(redis: Redis, raw: bytes) -> None:
    """Put a popped message back at the head of the list (a worker that stops before starting it)."""
    await redis.lpush(DISPATCH_LIST, raw)  # type: ignore[misc]


async def pending_direct_runs(redis: Redis, *, accepted_before_ms: int, limit: int = 100) -> list[bytes]:
    """Messages accepted before this time that still have no run record (a worker may have died with them)."""
    found = await redis.zrangebyscore(DISPATCH_PENDING, "-inf", f"({accepted_before_ms}", start=0, num=limit)
    return list(found)


async def forget_direct_run(redis: Redis, raw: bytes) -> None:
    await redis.zrem(DISPATCH_PENDING, raw)


# arq's enqueue_job in one round trip (it takes three): queue the job unless its id is queued, running or
# kept as a result (the same dedupe), then wake the workers with the due time. Batched in a pipeline by the
# reconcile, which keeps thousands of fires enqueued.
_ENQUEUE_UNLESS_PRESENT = """
if redis.call('EXISTS', KEYS[1], KEYS[2]) > 0 then
  return 0
end
redis.call('PSETEX', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[4])
if ARGV[5] ~= '' then
  redis.call('PUBLISH', ARGV[5], ARGV[3])
end
return 1
"""


def _fire_call(
    redis: ArqRedis, job_id: str, fire_at: datetime, now_ms: int, wake: bool, lead: float
) -> tuple[list[Any], list[Any]]:
    arq_id = fire_id(job_id, fire_at)
    # Armed `lead` seconds ahead: the worker that takes it claims it meanwhile and starts it on the instant.
    score = int(fire_at.timestamp() * 1000) - int(lead * 1000)
    # arq's default expiry is "defer time + 1 day" measured from now, which goes negative (and Redis
    # rejects it) for a catch-up fire more than a day old; count the day from whichever is later.
    expires_ms = max(score - now_ms, 0) + int(FIRE_EXPIRY.total_seconds() * 1000)
    record = serialize_job(
        FIRE_FUNCTION, (job_id, fire_at.isoformat()), {}, None, now_ms, serializer=redis.job_serializer
    )
    keys = [job_key_prefix + arq_id, result_key_prefix + arq_id, redis.default_queue_name]
    channel = wake_channel(redis.default_queue_name) if wake else ""
    return keys, [expires_ms, record, score, arq_id, channel]


async def enqueue_fire(redis: ArqRedis, *, job_id: str, fire_at: datetime, lead: float = 0.0) -> bool:
    """Enqueue the fire deferred to `lead` seconds before its time; False when arq already holds that id."""
    keys, args = _fire_call(redis, job_id, fire_at, timestamp_ms(), wake=True, lead=lead)
    return bool(await redis.eval(_ENQUEUE_UNLESS_PRESENT, len(keys), *keys, *args))  # type: ignore[misc]


async def enqueue_fires(redis: ArqRedis, fires: Sequence[tuple[str, datetime, float]]) -> list[bool]:
    """enqueue_fire for many (job id, fire time, lead) in one round trip, and one wake-up for them all."""
    if not fires:
        return []
    now_ms = timestamp_ms()
    script = redis.register_script(_ENQUEUE_UNLESS_PRESENT)
    async with redis.pipeline(transaction=False) as pipe:
        for job_id, fire_at, lead in fires:
            keys, args = _fire_call(redis, job_id, fire_at, now_ms, wake=False, lead=lead)
            await script(keys=keys, args=args, client=pipe)
        added = [bool(x) for x in await pipe.execute()]
    new = [fire_at - timedelta(seconds=lead) for (_, fire_at, lead), ok in zip(fires, added, strict=True) if ok]
    if new:
        await wake_workers(redis, min(new))
    return added


# arq's claim of a queued job (Worker.start_jobs: WATCH, EXISTS, ZSCORE, then MULTI/PSETEX/EXEC, four round
# trips per job, one job after another) for many at once: a job is claimed when it is still queued, due, and
# in progress nowhere; at most ARGV[4] of them. The in-progress key holds the call's token, so that a call
# retried after its reply was lost finds the jobs it claimed still its own: they are counted first, so the
# retry returns them all even if another id has become claimable meanwhile.
_CLAIM_DUE = """
local now, token, ttl, limit, prefix = tonumber(ARGV[1]), ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]
local mine, held = {}, 0
for i = 6, #ARGV do
  if redis.call('GET', prefix .. ARGV[i]) == token then
    mine[ARGV[i]] = true
    held = held + 1
  end
end
local claimed = {}
for i = 6, #ARGV do
  local id = ARGV[i]
  local score = redis.call('ZSCORE', KEYS[1], id)
  if score then
    if mine[id] then
      claimed[#claimed + 1] = id
      claimed[#claimed + 1] = score
    elseif held < limit and tonumber(score) <= now and redis.call('SET', prefix .. id, token, 'NX', 'PX', ttl) then
      held = held + 1
      claimed[#claimed + 1] = id
      claimed[#claimed + 1] = score
    end
  end
end
return claimed
"""

# Undo the claims a call made, for a caller that will not run them (its claim failed or was cancelled
# after the script may have run): without it they would stay "in progress" for arq's whole timeout.
_UNCLAIM = """
local n = 0
for i = 2, #ARGV do
  if redis.call('GET', ARGV[1] .. ARGV[i]) == KEYS[1] then
    redis.call('DEL', ARGV[1] .. ARGV[i])
    n = n + 1
  end
end
return n
"""


async def claim_due(
    redis: Redis, *, queue_name: str, job_ids: Sequence[bytes], limit: int, in_progress_ms: int, token: str
) -> list[tuple[str, int]]:
    """Mark up to `limit` of these arq jobs in progress for this worker, as arq's own claim would (the ones
    queued, due by this process's clock, and not in progress elsewhere): their (id, score), in the given order.
    One round trip whatever their number: claims no longer queue behind each other's round trips."""
    if not job_ids or limit <= 0:
        return []
    args: list[bytes | str | int] = [timestamp_ms(), token, in_progress_ms, limit, in_progress_key_prefix, *job_ids]
    flat = await redis.register_script(_CLAIM_DUE)(keys=[queue_name], args=args)
    return [(flat[i].decode(), int(float(flat[i + 1]))) for i in range(0, len(flat), 2)]


async def unclaim(redis: Redis, *, job_ids: Sequence[bytes], token: str) -> int:
    """Give back what a `claim_due` call with this token claimed among these ids; how many it had."""
    if not job_ids:
        return 0
    args: list[bytes | str] = [in_progress_key_prefix, *job_ids]
    return int(await redis.register_script(_UNCLAIM)(keys=[token], args=args))


async def fires_pending(redis: ArqRedis, fires: Sequence[tuple[str, datetime]]) -> list[bool]:
    """fire_pending for many fires in one round trip."""
    if not fires:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for job_id, fire_at in fires:
            pipe.exists(job_key_prefix + fire_id(job_id, fire_at))
        return [bool(x) for x in await pipe.execute()]


async def fire_pending(redis: ArqRedis, *, job_id: str, fire_at: datetime) -> bool:
    """Whether arq still holds this fire (queued or running)."""
    return bool(await redis.exists(job_key_prefix + fire_id(job_id, fire_at)))


async def cancel_fire(redis: ArqRedis, *, job_id: str, fire_at: datetime) -> None:
    """Drop a fire that has not started. A fire that slips through still checks the job before it runs."""
    await forget(redis, fire_id(job_id, fire_at))


async def rearm_fire(redis: ArqRedis, *, job_id: str, fire_at: datetime) -> None:
    """Let arq deliver this fire once more although its one try is used: for a fire handed back unstarted
    (its worker shut down while it was armed). arq keeps a cancelled job queued for a retry and counts tries
    in this key; without it the next worker sees try 1 again instead of refusing try 2 > max_tries."""
    await redis.delete(retry_key_prefix + fire_id(job_id, fire_at))


async def forget(redis: ArqRedis, arq_id: str) -> None:
    """Remove every trace of an arq job. A job whose worker was killed otherwise stays at the head of
    the queue, marked in progress for arq's whole timeout, and enough of them starve every worker."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.zrem(default_queue_name, arq_id)
        pipe.delete(job_key_prefix + arq_id, in_progress_key_prefix + arq_id, retry_key_prefix + arq_id)
        await pipe.execute()
