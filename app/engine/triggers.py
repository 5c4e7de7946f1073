"""Triggers: "run this job now", accepted in one Redis round trip and handed straight to a worker.

A trigger does not go through arq. The API takes the job's lease and pushes a ready-to-run message (`Message`:
the job as it is now, and the lease's expiry by Redis's clock) onto a Redis list, in one Lua call that also
publishes `run.queued`. Every worker's consumer (app.engine.consumer) waits on that list in BLPOP; the one that
pops a message starts the run (app.engine.starts) with no arq claim and no second read of the job. Until its run
record exists, the message is also kept in a pending set: a worker that dies between the pop and the record leaves
it there, and any consumer's sweep records it, once its lease has lapsed, as not started.

A process whose embedded worker has a free slot (a `LocalRunner`) runs its own triggers without the list: the
message goes to the pending set only, and the trigger returns once the handler has started.
"""

from __future__ import annotations

import json
import weakref
from dataclasses import dataclass
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.engine import events, leases
from app.engine.runner import JobSpec
from app.engine.runs import new_token
from app.platform import metrics
from app.platform.runtime import Runtime

LIST_KEY = "jg:dispatch"
PENDING_KEY = "jg:dispatch:pending"


class QueueUnavailable(Exception):
    """Redis could not take the trigger: nothing was queued, retry later."""


@dataclass(frozen=True, slots=True)
class Message:
    """Everything a worker needs to start the handler: the job as it was when the trigger was accepted.

    `expires_ms`: when its queued lease expires, by Redis's clock (the dispatch script sets it): a consumer that
    knows Redis's clock can tell that a fresh message's lease is still its own without asking
    (app.engine.redis_clock).
    """

    job_id: str
    token: str
    type: str
    payload: dict[str, Any]
    timeout: float | None
    triggered_by: str
    expires_ms: int = 0

    @property
    def job(self) -> JobSpec:
        return JobSpec(id=self.job_id, type=self.type, payload=self.payload, timeout=self.timeout)

    def encode_without_time(self) -> bytes:
        """The encoding up to `expires_ms`, which the dispatch script appends with the closing bracket."""
        fields = [self.job_id, self.token, self.type, self.payload, self.timeout, self.triggered_by]
        return json.dumps(fields, separators=(",", ":")).encode()[:-1] + b","

    @classmethod
    def decode(cls, raw: bytes | str) -> Message:
        job_id, token, type_, payload, timeout, triggered_by, expires_ms = json.loads(raw)
        return cls(job_id, token, type_, payload, timeout, triggered_by, int(expires_ms))


def decode_or_none(raw: bytes) -> Message | None:
    try:
        return Message.decode(raw)
    except (ValueError, TypeError):
        return None


class LocalRunner(Protocol):
    """A worker in this process that takes a trigger straight from the call that accepted it, without the
    list: the API's embedded worker (app.engine.consumer.Consumer)."""

    async def reserve(self) -> bool:
        """Take a free slot for a run about to be accepted; False when there is none (the list it is)."""

    def release(self) -> None:
        """Give back a slot reserved for a run that was not accepted."""

    async def start(self, raw: bytes) -> None:
        """Run an accepted message in the reserved slot; returns once its handler has started (or the run
        ended before that). A worker stopping meanwhile frees the slot and queues the message for the others."""


# The embedded worker taking this runtime's triggers, while it takes runs.
_local_runners: weakref.WeakKeyDictionary[Runtime, LocalRunner] = weakref.WeakKeyDictionary()


def set_local_runner(rt: Runtime, runner: LocalRunner | None) -> None:
    if runner is None:
        _local_runners.pop(rt, None)
    else:
        _local_runners[rt] = runner


def local_runner(rt: Runtime) -> LocalRunner | None:
    return _local_runners.get(rt)


# Take the free lease, then queue the message, remember it as pending and publish the `run.queued` event:
# atomic and one round trip, so a lease is never left without its message nor the other way round. The
# message ends with the lease's expiry by Redis's own clock, the clock that expires it: the key's own expiry
# (PEXPIRETIME, Redis 7), else TIME plus its time to live, which may be 1 ms off. ARGV[6] = 1: the caller runs it
# itself (an API's embedded worker with a free slot), so it is not pushed; the pending entry still covers a caller
# that dies before the run record. A lease already ours is a client retry of a call that went through: its message
# was queued then, unless that call meant to run it itself, whose reply was lost and who therefore never did: the
# workers get it now, with the earlier call's lease.
_LEASE_AND_DISPATCH = """
local current = redis.call('GET', KEYS[1])
if current ~= false and current ~= ARGV[1] then
  return 0
end
if current == ARGV[1] and ARGV[6] ~= '1' then
  return ''
end
if current ~= ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
local expires = redis.pcall('PEXPIRETIME', KEYS[1])
if type(expires) ~= 'number' or expires < 0 then
  local now = redis.call('TIME')
  expires = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) + math.max(redis.call('PTTL', KEYS[1]), 0)
end
local message = ARGV[3] .. string.format('%d', expires) .. ']'
local accepted = redis.call('TIME')
local accepted_ms = tonumber(accepted[1]) * 1000 + math.floor(tonumber(accepted[2]) / 1000)
if current == ARGV[1] then
  redis.call('RPUSH', KEYS[2], message)
  redis.call('ZADD', KEYS[3], accepted_ms, message)
  return ''
end
if ARGV[6] ~= '1' then
  redis.call('RPUSH', KEYS[2], message)
end
redis.call('ZADD', KEYS[3], accepted_ms, message)
redis.call('PUBLISH', ARGV[4], ARGV[5])
return message
"""


@dataclass(frozen=True, slots=True)
class Dispatched:
    """What the dispatch script did. `message`: the run's message as queued, when this call took the lease
    (None when an earlier call with the same token had); the caller that asked to run it itself runs it."""

    accepted: bool
    message: bytes | None = None


async def dispatch(rt: Runtime, message: Message, *, run_here: bool) -> Dispatched:
    """The dispatch script for one message (`run_here`: for the caller to run itself, not queued)."""
    keys = [leases.key(message.job_id), LIST_KEY, PENDING_KEY]
    queued = events.event_json(events.RUN_QUEUED, message.job_id, running=True, triggeredBy=message.triggered_by)
    args: list[Any] = [
        message.token,
        max(1, int(rt.settings.queued_lease_ttl_seconds * 1000)),
        message.encode_without_time(),
        events.CHANNEL,
        queued,
        "1" if run_here else "0",
    ]
    reply = await rt.redis.eval(_LEASE_AND_DISPATCH, len(keys), *keys, *args)  # type: ignore[misc]
    if reply == 0:
        return Dispatched(accepted=False)
    return Dispatched(accepted=True, message=bytes(reply) or None)


async def accept(rt: Runtime, job: JobSpec, *, actor: str) -> str | None:
    """Queue a run of the job for a worker under a new lease; its token, or None when the job's lease is
    someone else's (running). QueueUnavailable when Redis cannot take it.

    In a process whose embedded worker has a free slot, that worker takes it from here, and the call returns
    once its handler has started."""
    message = Message(job.id, new_token(), job.type, job.payload, job.timeout, actor)
    local = local_runner(rt)
    here = local is not None and await local.reserve()
    handed_over = False
    try:
        try:
            dispatched = await dispatch(rt, message, run_here=here)
        except RedisError:
            if not here:
                raise
            # The script may have run with its reply lost: the lease is ours and the message only in the pending
            # set, where no worker looks for it. The same call again is safe (one lease per token), and in that
            # case it pushes the message for the workers.
            dispatched = await dispatch(rt, message, run_here=here)
        if here and local is not None and dispatched.message is not None:
            handed_over = True
            await local.start(dispatched.message)  # back once its handler has started
    except RedisError as exc:
        raise QueueUnavailable("The job queue (Redis) is unavailable; try again shortly") from exc
    finally:
        if here and local is not None and not handed_over:
            local.release()  # not taken here (refused, queued, failed or cancelled): the slot is free again
    if not dispatched.accepted:
        return None
    metrics.event_published(events.RUN_QUEUED)
    return message.token


async def pop(redis: Redis, timeout: int) -> bytes | None:
    """The oldest queued message, waiting up to `timeout` seconds for one."""
    popped = await redis.blpop([LIST_KEY], timeout=timeout)  # type: ignore[misc]
    return None if popped is None else popped[1]


async def hand_back(redis: Redis, raw: bytes) -> None:
    """Put a popped message back at the head of the list (a worker that stops before starting it)."""
    await redis.lpush(LIST_KEY, raw)  # type: ignore[misc]


async def pending(redis: Redis, *, accepted_before_ms: int, limit: int = 100) -> list[bytes]:
    """Messages accepted before this time that still have no run record (a worker may have died with them)."""
    return list(await redis.zrangebyscore(PENDING_KEY, "-inf", f"({accepted_before_ms}", start=0, num=limit))


async def forget(redis: Redis, raw: bytes) -> None:
    await redis.zrem(PENDING_KEY, raw)


async def waiting(redis: Redis) -> int:
    """Messages queued for the workers' consumers."""
    return int(await redis.llen(LIST_KEY))  # type: ignore[misc]
