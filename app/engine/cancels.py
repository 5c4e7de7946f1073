"""Cancel a job's current run, wherever it executes.

A cancel is asked against the token holding the job's lease, in one Lua call that stores the request beside the
lease (`<token>\\n<details>`, app.engine.leases) and publishes it on CHANNEL. Every worker process listens there
(`Listener`) and cancels the handler of that token if it runs in this process (`watch`), within milliseconds. The
lease keeper also reads the stored request at each renewal, so a process that missed the message (its
subscription was down) cancels the handler within HEARTBEAT_SECONDS.

A token that has not started does not start: a queued trigger's lease take says CANCELLED (leases._TAKE) and its
start records it as cancelled; a retry waiting out its backoff or a buffered fire, queued in arq, is taken out of
the queue at once by the caller (`withdraw`), which ends the chain.

The run is recorded only when its handler has really stopped (its calls in threads included, app.engine.runner):
until then its lease is held, the job is `running`, and the stored request makes it `cancelling`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field

from redis.exceptions import RedisError

from app.engine import later, leases, runs
from app.engine.groupcommit import per_loop
from app.platform import metrics
from app.platform.aio import cancel_and_wait
from app.platform.runtime import Runtime

log = logging.getLogger(__name__)

CHANNEL = "jg:cancels"
# How long a request outlives the lease it was asked of (the keeper keeps it alive while the run renews): a retry
# waiting out a backoff of up to a day holds its lease that long, and its start must still find the request.
REQUEST_TTL_SECONDS = 3600.0
RETRY_SECONDS = 1.0

_REQUEST = """
local holder = redis.call('GET', KEYS[1])
if not holder then
  return false
end
local ttl = math.max(redis.call('PTTL', KEYS[1]), 0) + tonumber(ARGV[2])
redis.call('SET', KEYS[2], holder .. '\\n' .. ARGV[1], 'PX', ttl)
redis.call('PUBLISH', ARGV[3], cjson.encode({jobId = ARGV[4], token = holder, details = ARGV[1]}))
return holder
"""


async def request(rt: Runtime, job_id: str, details: str, *, by: str) -> str | None:
    """Ask the job's current run to stop, recorded with `details` (`cancelled by user:<sub>`): the token it was
    asked of, or None when nothing holds the job. `by`: user or policy, for the metric."""
    keys = [leases.key(job_id), leases.cancel_key(job_id)]
    ttl = str(int(REQUEST_TTL_SECONDS * 1000))
    holder = await rt.redis.eval(_REQUEST, len(keys), *keys, details, ttl, CHANNEL, job_id)  # type: ignore[misc]
    if not holder:
        return None
    metrics.cancel_requested(job_id, by)
    return holder.decode() if isinstance(holder, bytes) else str(holder)


async def details_for(rt: Runtime, job_id: str, token: str) -> str | None:
    """The details of a cancel asked for this token, if one was."""
    asked = await rt.redis.get(leases.cancel_key(job_id))
    text = asked.decode() if isinstance(asked, bytes) else asked
    if text is None or not text.startswith(token + "\n"):
        return None
    return str(text[len(token) + 1 :])


async def withdraw(rt: Runtime, job_id: str, token: str, details: str) -> bool:
    """A later start of this token still waiting in arq's queue (a retry in its backoff, a buffered fire): taken
    out and recorded as a run cancelled before it started, its lease released (to a fire buffered behind it, if
    any). False when there is none (it runs, or it is a trigger, or it is starting right now, or it is being
    queued: its start then finds the request and records it so)."""
    start = await later.take_back(rt.redis, token)
    if start is None:
        return False
    try:
        await runs.record_not_started(
            rt,
            job_id=job_id,
            token=token,
            triggered_by=start.triggered_by,
            fire_at=start.fire_at,
            attempt=start.attempt,
            details=details,
        )
    except Exception:
        # Back in the queue, due now: its start finds the request and records it (the cancel stands).
        log.warning("could not record the cancelled start %s of %s; a worker will", token, job_id, exc_info=True)
        await later.enqueue(rt.redis, [dataclasses.replace(start, due=rt.now())])
        return False
    return True


@dataclass(eq=False)
class Watch:
    """A run's handler in this process, which a cancel request reaches."""

    handler: asyncio.Task[object]
    details: str | None = None  # set once a cancel was asked

    def cancel(self, details: str) -> None:
        if self.details is not None or self.handler.done():
            return
        self.details = details
        log.info("cancelling the handler: %s", details)
        self.handler.cancel()


# A request for a token that has no handler here yet is kept this long: its run may be starting in this process
# (lease taken, record being written), and its handler must not wait for the keeper's next renewal to stop.
EARLY_SECONDS = 10.0


@dataclass(eq=False)
class _Watches:
    by_token: dict[str, Watch] = field(default_factory=dict)
    early: dict[str, tuple[str, float]] = field(default_factory=dict)  # token -> (details, when it came)


_watches = per_loop(_Watches)


def watch(token: str, handler: asyncio.Task[object]) -> Watch:
    watches = _watches()
    found = watches.by_token[token] = Watch(handler)
    early = watches.early.pop(token, None)
    if early is not None:
        found.cancel(early[0])
    return found


def unwatch(token: str) -> None:
    _watches().by_token.pop(token, None)


def deliver(token: str, details: str) -> bool:
    """Cancel this token's handler if it runs in this process; else remember the request a moment, in case its
    handler is about to start here."""
    watches = _watches()
    found = watches.by_token.get(token)
    if found is None:
        now = time.monotonic()
        watches.early = {t: e for t, e in watches.early.items() if now - e[1] < EARLY_SECONDS}
        watches.early[token] = (details, now)
        return False
    found.cancel(details)
    return True


class Listener:
    """A worker process's subscription to cancel requests."""

    def __init__(self, rt: Runtime) -> None:
        self._rt = rt
        self.connected = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="cancel-listener")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    async def _run(self) -> None:
        failing = False
        while True:
            try:
                await self._listen()
            except (RedisError, OSError):
                self.connected.clear()
                if not failing:
                    log.warning("cancel requests: subscription lost; retrying every %s s", RETRY_SECONDS)
                failing = True
                await asyncio.sleep(RETRY_SECONDS)

    async def _listen(self) -> None:
        pubsub = self._rt.redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(CHANNEL)
            self.connected.set()
            while True:
                message = await pubsub.get_message(timeout=1.0)
                if message is not None:
                    _handle(message["data"])
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]


def _handle(raw: bytes | str) -> None:
    try:
        asked = json.loads(raw)
        token, details = str(asked["token"]), str(asked["details"])
    except (ValueError, KeyError, TypeError):
        log.warning("cancel requests: ignoring malformed message %r", raw)
        return
    deliver(token, details)
