"""Every worker's consumer of triggers (app.engine.triggers).

Each worker runs one consumer task blocked in BLPOP on the trigger list; the worker that pops a message starts
the run through the one start path (app.engine.starts) and hands it to the runner.
- The lease: a lease that lapsed while its message was queued may be someone else's by now. The message says
  when its lease expires by Redis's clock (app.engine.redis_clock); one with at least LEASE_TTL_SECONDS left
  cannot have lost it, as nobody takes a lease that is not free: its handler starts as soon as the run record
  is written, while the lease is extended to a run's (the lease keeper cancels the handler should that be
  refused). Any other message, or one popped before this worker has read Redis's clock, has its lease extended
  first, and is recorded as not started if that is refused.
- Slots: the consumer pops only while the worker has a free slot, and takes arq's own slots
  (app.adapters.arq.ArqWorker), so WORKER_MAX_JOBS bounds arq's jobs and triggers together. Its runs are arq
  tasks as far as shutdown is concerned: SIGTERM lets them finish within the grace, then cancels them
  (recorded `worker shut down`).
- Stopping: once the worker stops taking jobs the consumer pops no more; a message it pops meanwhile goes
  back to the head of the list for another worker.
- Nothing lost: a message stays in the list while no worker runs; the queued lease decides what happens when
  one finally pops it. Until its run record exists, the message is also kept in a pending set; a worker killed
  between the pop and the record leaves it there, and any consumer's sweep records it once its lease has lapsed.
- The API's embedded worker: a trigger accepted by its own API process, while it has a free slot, is not
  pushed at all; the consumer takes it from the trigger call (`Consumer.start`, a triggers.LocalRunner), with
  the same pending entry in case the process dies before the run record. One handed over while the worker is
  stopping goes to the list instead.
- Idle cost: one BLPOP per BLOCK_SECONDS, and one TIME and one sweep read per SWEEP_SECONDS at most.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.adapters.arq import ArqWorker
from app.adapters.redis import pool_like
from app.engine import leases, runner, runs, starts, triggers
from app.engine.redis_clock import RedisClock
from app.platform.aio import cancel_and_wait
from app.platform.redis_pool import SOCKET_TIMEOUT_SECONDS
from app.platform.runtime import Runtime

log = logging.getLogger(__name__)

# How long one BLPOP waits: the consumer's whole idle cost, and how late it notices a stop it was not told of.
BLOCK_SECONDS = 5
SWEEP_SECONDS = 5.0
RETRY_SECONDS = 1.0
# While every slot is busy, how often to look for a free one (a busy worker only).
SLOT_WAIT_SECONDS = 0.01
TASK_PREFIX = "direct:"


class Consumer:
    """One worker's consumer of the trigger list."""

    def __init__(self, worker: ArqWorker, rt: Runtime, run_handler: runner.RunHandler) -> None:
        self._worker = worker
        self._rt = rt
        self._run_handler = run_handler
        self._redis = _blocking_client(rt.redis)
        self._clock = RedisClock()
        self.taken = 0  # runs started here, for tests
        self.taken_here = 0  # of which handed over by this process's own triggers (LocalRunner)
        self._task = asyncio.create_task(self._consume(), name="direct-dispatch")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        await self._redis.aclose(close_connection_pool=True)

    def done(self) -> bool:
        return self._task.done()

    async def _consume(self) -> None:
        next_sweep = 0.0
        failing = False  # warn once per outage, not once per retry
        while self._worker.accepting:
            await self._worker.wait_for_free_slot(SLOT_WAIT_SECONDS)
            if not self._worker.accepting:
                break
            try:
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + SWEEP_SECONDS
                    await self._clock.read(self._redis)
                    await sweep(self._rt)
                raw = await triggers.pop(self._redis, BLOCK_SECONDS)
            except (RedisError, OSError):
                if not failing:
                    log.warning("direct dispatch: Redis unavailable; retrying every %s s", RETRY_SECONDS, exc_info=True)
                failing = True
                await asyncio.sleep(RETRY_SECONDS)
                continue
            except Exception:
                # The sweep's database writes (a locked or stopped database): the consumer must outlive them.
                log.exception("direct dispatch: sweep failed; retrying in %s s", RETRY_SECONDS)
                await asyncio.sleep(RETRY_SECONDS)
                continue
            if failing:
                log.info("direct dispatch: Redis is back")
                failing = False
            if raw is None:
                continue
            if not self._worker.accepting:
                await self._hand_back(raw)
                break
            await self._start(raw)

    async def _start(self, raw: bytes) -> None:
        message = triggers.decode_or_none(raw)
        if message is None:
            log.error("direct dispatch: dropping an unreadable message %r", raw[:200])
            with contextlib.suppress(RedisError):
                await triggers.forget(self._rt.redis, raw)
            return
        try:
            # arq's poll may have taken the last slot since the pop.
            slot = await self._worker.take_slot(SLOT_WAIT_SECONDS)
        except asyncio.CancelledError:
            await asyncio.shield(self._hand_back(raw))
            raise
        if not slot:
            await self._hand_back(raw)
            return
        self._launch(raw, message)

    def _launch(
        self,
        raw: bytes,
        message: triggers.Message,
        launched: asyncio.Future[None] | None = None,
        context: contextvars.Context | None = None,
    ) -> asyncio.Task[None]:
        """Run a message in a slot already taken; arq's shutdown and bookkeeping treat it as one of its jobs."""
        self.taken += 1
        name = TASK_PREFIX + message.token
        task = asyncio.create_task(self._run(raw, message, launched), name=name, context=context)
        self._worker.adopt(name, task)
        return task

    async def _run(self, raw: bytes, message: triggers.Message, launched: asyncio.Future[None] | None) -> None:
        # Never raises: arq's poll loop calls result() on its finished tasks.
        try:
            await run_trigger(self._rt, self._run_handler, raw, message, self._clock, launched=launched)
        except asyncio.CancelledError:
            pass  # shutting down; a run that had begun is recorded `worker shut down` by the runner
        except Exception:
            log.exception("direct run %s of %s failed before its handler", message.token, message.job_id)

    # --- triggers.LocalRunner: the API's own triggers, when this is its embedded worker ------------------------

    async def reserve(self) -> bool:
        return await self._worker.try_take_slot()

    def release(self) -> None:
        self._worker.release_slot()

    async def start(self, raw: bytes) -> None:
        if not self._worker.accepting:
            # Stopping since `reserve`: a run started now would outlive the worker's shutdown. The workers get it.
            self.release()
            await self._hand_back(raw)
            return
        self.taken_here += 1
        launched: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # Not in the request's context: the run is not part of the request that accepted it, and its log lines
        # must not carry that request's id and user.
        context = contextvars.copy_context()
        context.run(structlog.contextvars.clear_contextvars)
        task = self._launch(raw, triggers.Message.decode(raw), launched, context)
        await asyncio.wait({launched, task}, return_when=asyncio.FIRST_COMPLETED)

    async def _hand_back(self, raw: bytes) -> None:
        try:
            await triggers.hand_back(self._redis, raw)
        except (RedisError, OSError):
            log.warning("direct dispatch: could not hand a run back; it is recorded once its lease lapses")


async def run_trigger(
    rt: Runtime,
    run_handler: runner.RunHandler,
    raw: bytes,
    message: triggers.Message,
    clock: RedisClock | None = None,
    *,
    launched: asyncio.Future[None] | None = None,
) -> None:
    """Start a popped trigger and run its handler; `launched` is resolved once the handler is started."""
    start = starts.Start(job=message.job, token=message.token, triggered_by=message.triggered_by, message=raw)
    began = await starts.begin(rt, [start], trusted=_lease_still_ours(rt, message, clock))
    run = began.runs[0]
    if run is None:
        # Not started: its lease lapsed (recorded as such), or this token began already (never execute twice).
        await asyncio.gather(began.announced, *([began.confirming] if began.confirming else []), return_exceptions=True)
        return
    await runner.execute(
        rt, run_handler, message.job, run, started=began.announced, confirming=began.confirming, launched=launched
    )


def _lease_still_ours(rt: Runtime, message: triggers.Message, clock: RedisClock | None) -> bool:
    """By Redis's clock, the message's lease still has at least a run lease's life ahead (LEASE_TTL_SECONDS), so
    it cannot have lapsed, and the lease keeper, whose first renewal is the extension under way, cancels the
    handler before it could even if every renewal failed: as safe as a run whose lease was just extended."""
    left = clock.ms_until(message.expires_ms) if clock is not None else None
    return left is not None and left >= rt.settings.lease_ttl_seconds * 1000


async def sweep(rt: Runtime) -> int:
    """Record the triggers whose worker died before writing their run record (their lease lapsed), and
    forget the pending entries of runs that have a record. How many it recorded. Safe anywhere, any number
    of times."""
    margin = rt.settings.queued_lease_ttl_seconds + rt.settings.heartbeat_seconds
    before_ms = int((rt.now().timestamp() - margin) * 1000)
    stale = await triggers.pending(rt.redis, accepted_before_ms=before_ms)
    if not stale:
        return 0
    messages = [(raw, triggers.decode_or_none(raw)) for raw in stale]
    holders = await leases.holders(rt.redis, sorted({m.job_id for _, m in messages if m is not None}))
    recorded = 0
    for raw, message in messages:
        if message is not None:
            if holders.get(message.job_id) == message.token:
                continue  # taken and running (its record may still be on its way)
            if await runs.record_dropped(
                rt, job_id=message.job_id, token=message.token, triggered_by=message.triggered_by
            ):
                recorded += 1
        await triggers.forget(rt.redis, raw)
    return recorded


def _blocking_client(redis: Redis) -> Redis:
    """A client of its own for BLPOP: the shared pool's read timeout is shorter than the block, and a
    blocked connection must not be taken from the pool the runs use."""
    pool = pool_like(
        redis.connection_pool,
        max_connections=4,
        timeout=SOCKET_TIMEOUT_SECONDS,
        read_timeout=BLOCK_SECONDS + SOCKET_TIMEOUT_SECONDS,
    )
    return Redis(connection_pool=pool)
