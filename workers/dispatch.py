"""Direct dispatch: every worker's consumer of manual triggers.

`POST /trigger` takes the job's lease and pushes a ready-to-run message (app.queue.DirectRun) onto a Redis
list in one round trip. Each worker runs one consumer task blocked in BLPOP on that list; the worker that
pops a message writes the run record and starts the handler. No arq claim, no second read of the job.
- The lease: a lease that lapsed while its message was queued may be someone else's by now. The message says
  when its lease expires by Redis's clock (workers.redis_clock); one with at least LEASE_TTL_SECONDS left
  cannot have lost it, as nobody takes a lease that is not free: its handler starts as soon as the run record
  is written, while the lease is extended to a run's (the lease keeper cancels the handler should that be
  refused). Any other message, or one popped before this worker has read Redis's clock, has its lease checked
  first.

- Slots: the consumer pops only while the worker has a free slot, and counts its runs in arq's own
  `job_counter`/`sem`, so WORKER_MAX_JOBS bounds arq's jobs and direct runs together. Its runs are arq
  tasks as far as shutdown is concerned (`worker.tasks`): SIGTERM lets them finish within the grace, then
  cancels them (recorded `worker shut down`).
- Stopping: once the worker stops taking jobs the consumer pops no more; a message it pops meanwhile goes
  back to the head of the list for another worker.
- Nothing lost: a message stays in the list while no worker runs; the queued-lease rule decides when one
  finally pops it (`record_dropped` once the lease lapsed). Until its run record exists, the message is also
  kept in a pending set; a worker killed between the pop and the record leaves it there, and any
  consumer's sweep records it once its lease has lapsed.
- The API's embedded worker: a trigger accepted by its own API process, while it has a free slot, is not
  pushed at all; the consumer takes it from the trigger call (`Consumer.start`, app.platform.runtime.LocalRunner),
  with the same pending entry in case the process dies before the run record. One handed over while the
  worker is stopping goes to the list instead.
- Idle cost: one BLPOP per BLOCK_SECONDS, and one TIME and one sweep read per SWEEP_SECONDS at most.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from typing import Any

import structlog
from arq import Worker
from redis.asyncio import ConnectionPool, Redis
from redis.exceptions import RedisError

from app import events, queue
from app.data.jobs import Job
from app.data.runs import Run
from app.platform import metrics
from app.platform.aio import cancel_and_wait
from app.platform.redis_pool import SOCKET_TIMEOUT_SECONDS
from app.platform.runtime import Runtime
from app.runs import lease
from app.runs import service as runs_service
from workers.redis_clock import RedisClock
from workers.runner import execute

log = logging.getLogger(__name__)

# How long one BLPOP waits: the consumer's whole idle cost, and how late it notices a stop it was not told of.
BLOCK_SECONDS = 5
SWEEP_SECONDS = 5.0
RETRY_SECONDS = 1.0
# While every slot is busy, how often to look for a free one (a busy worker only).
SLOT_WAIT_SECONDS = 0.01
TASK_PREFIX = "direct:"


class Consumer:
    """One worker's consumer of the dispatch list."""

    def __init__(self, worker: Worker, rt: Runtime) -> None:
        self._worker = worker
        self._rt = rt
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
        while self._worker.allow_pick_jobs:
            await self._wait_for_a_free_slot()
            if not self._worker.allow_pick_jobs:
                break
            try:
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + SWEEP_SECONDS
                    await self._clock.read(self._redis)
                    await sweep(self._rt)
                raw = await queue.pop_direct_run(self._redis, BLOCK_SECONDS)
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
            if not self._worker.allow_pick_jobs:
                await self._hand_back(raw)
                break
            await self._start(raw)

    async def _wait_for_a_free_slot(self) -> None:
        worker = self._worker
        while worker.allow_pick_jobs and worker.job_counter >= worker.max_jobs:  # noqa: ASYNC110 - arq offers no event
            await asyncio.sleep(SLOT_WAIT_SECONDS)

    async def _take_slot(self) -> bool:
        """A slot as arq takes one (`Worker.start_jobs`): arq's poll may have taken the last one since the pop.
        False when the worker stops meanwhile."""
        worker = self._worker
        while worker.allow_pick_jobs:
            await worker.sem.acquire()
            if worker.job_counter < worker.max_jobs:
                worker.job_counter += 1
                return True
            worker.sem.release()
            await asyncio.sleep(SLOT_WAIT_SECONDS)
        return False

    async def _start(self, raw: bytes) -> None:
        try:
            message = queue.DirectRun.decode(raw)
        except (ValueError, TypeError):
            log.error("direct dispatch: dropping an unreadable message %r", raw[:200])
            with contextlib.suppress(RedisError):
                await queue.forget_direct_run(self._rt.redis, raw)
            return
        try:
            slot = await self._take_slot()
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
        message: queue.DirectRun,
        launched: asyncio.Future[None] | None = None,
        context: contextvars.Context | None = None,
    ) -> asyncio.Task[None]:
        """Run a message in a slot already taken."""
        self.taken += 1
        name = TASK_PREFIX + message.token
        task = asyncio.create_task(self._run(raw, message, launched), name=name, context=context)
        # arq's shutdown (grace, then cancel) and its bookkeeping treat it as one of its own jobs.
        self._worker.tasks[name] = task
        task.add_done_callback(lambda _: self._worker._release_sem_dec_counter_on_complete())
        return task

    async def _run(self, raw: bytes, message: queue.DirectRun, launched: asyncio.Future[None] | None) -> None:
        # Never raises: arq's poll loop calls result() on its finished tasks.
        try:
            await run_direct(self._rt, raw, message, self._clock, launched=launched)
        except asyncio.CancelledError:
            pass  # shutting down; a run that had begun is recorded `worker shut down` by the runner
        except Exception:
            log.exception("direct run %s of %s failed before its handler", message.token, message.job_id)

    # --- app.platform.runtime.LocalRunner: the API's own triggers, when this is its embedded worker -------------------

    async def reserve(self) -> bool:
        worker = self._worker
        if not worker.allow_pick_jobs or worker.job_counter >= worker.max_jobs or worker.sem.locked():
            return False
        await worker.sem.acquire()  # free, so it returns at once: nothing else can take the slot meanwhile
        worker.job_counter += 1
        return True

    def release(self) -> None:
        self._worker._release_sem_dec_counter_on_complete()

    async def start(self, raw: bytes) -> None:
        if not self._worker.allow_pick_jobs:
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
        task = self._launch(raw, queue.DirectRun.decode(raw), launched, context)
        await asyncio.wait({launched, task}, return_when=asyncio.FIRST_COMPLETED)

    async def _hand_back(self, raw: bytes) -> None:
        try:
            await queue.return_direct_run(self._redis, raw)
        except (RedisError, OSError):
            log.warning("direct dispatch: could not hand a run back; it is recorded once its lease lapses")


async def run_direct(
    rt: Runtime,
    raw: bytes,
    message: queue.DirectRun,
    clock: RedisClock | None = None,
    *,
    launched: asyncio.Future[None] | None = None,
) -> None:
    """Start a popped trigger: write its run record and run the handler, checking its lease first unless
    `clock` shows the lease has a run lease's life left. `launched` is resolved once the handler is started."""
    # The job as the trigger saw it: it cannot be deleted meanwhile (the lease refuses that).
    job = Job(id=message.job_id, type=message.type, payload=message.payload, timeout_seconds=message.timeout)
    # Compare-and-extend, from the queued lease to a run's, alongside the record's INSERT (issued in this step,
    # without a task hop).
    renewing = asyncio.create_task(lease.renew(rt.redis, message.job_id, message.token, rt.settings.lease_ttl_seconds))
    try:
        run = await runs_service.begin(
            rt,
            job=job,
            token=message.token,
            triggered_by=message.triggered_by,
            fire_at=None,
            attempt=1,
            announce=False,
        )
    except BaseException:
        renewing.cancel()
        raise
    if run is not None and _lease_still_ours(rt, message, clock):
        # The renewal's answer goes to the lease keeper: a refusal (never expected) cancels the handler.
        started = asyncio.create_task(_announce(rt, raw, run))
        await execute(rt, job, run, started=started, confirming=renewing, launched=launched)
        return
    renewed = await renewing
    if not renewed:
        await runs_service.record_dropped(
            rt, job_id=message.job_id, token=message.token, triggered_by=message.triggered_by, run=run
        )
        await queue.forget_direct_run(rt.redis, raw)
        return
    if run is None:
        # This token began already: never execute twice, and leave its lease to that execution.
        await queue.forget_direct_run(rt.redis, raw)
        return
    # The event and the pending set's clean-up go out while the handler starts.
    started = asyncio.create_task(_announce(rt, raw, run))
    await execute(rt, job, run, started=started, launched=launched)


def _lease_still_ours(rt: Runtime, message: queue.DirectRun, clock: RedisClock | None) -> bool:
    """By Redis's clock, the message's lease still has at least a run lease's life ahead (LEASE_TTL_SECONDS), so
    it cannot have lapsed, and the lease keeper, whose first renewal is the extension under way, cancels the
    handler before it could even if every renewal failed: as safe as a run whose lease was just extended."""
    left = clock.ms_until(message.expires_ms) if clock is not None else None
    return left is not None and left >= rt.settings.lease_ttl_seconds * 1000


async def _announce(rt: Runtime, raw: bytes, run: Run) -> None:
    try:
        await queue.direct_run_started(rt.redis, raw, channel=events.CHANNEL, event=runs_service.started_event(run))
        metrics.event_published("run.started")
    except RedisError:
        # Best effort like every event; the sweep drops the pending entry once it sees the run record.
        log.warning("could not announce run %s of %s", run.id, run.job_id, exc_info=True)


async def sweep(rt: Runtime) -> int:
    """Record the triggers whose worker died before writing their run record (their lease lapsed), and
    forget the pending entries of runs that have a record. How many it recorded. Safe anywhere, any number
    of times."""
    margin = rt.settings.queued_lease_ttl_seconds + rt.settings.heartbeat_seconds
    before_ms = int((rt.now().timestamp() - margin) * 1000)
    stale = await queue.pending_direct_runs(rt.redis, accepted_before_ms=before_ms)
    if not stale:
        return 0
    messages = [(raw, _decode(raw)) for raw in stale]
    holders = await lease.holders(rt.redis, sorted({m.job_id for _, m in messages if m is not None}))
    recorded = 0
    for raw, message in messages:
        if message is not None:
            if holders.get(message.job_id) == message.token:
                continue  # taken and running (its record may still be on its way)
            if await runs_service.record_dropped(
                rt, job_id=message.job_id, token=message.token, triggered_by=message.triggered_by
            ):
                recorded += 1
        await queue.forget_direct_run(rt.redis, raw)
    return recorded


def _decode(raw: bytes) -> queue.DirectRun | None:
    try:
        return queue.DirectRun.decode(raw)
    except (ValueError, TypeError):
        return None


def _blocking_client(redis: Redis) -> Redis:
    """A client of its own for BLPOP: the shared pool's read timeout is shorter than the block, and a
    blocked connection must not be taken from the pool the runs use."""
    shared = redis.connection_pool
    kwargs: dict[str, Any] = {**shared.connection_kwargs, "socket_timeout": BLOCK_SECONDS + SOCKET_TIMEOUT_SECONDS}
    return Redis(connection_pool=ConnectionPool(connection_class=shared.connection_class, max_connections=4, **kwargs))


def _current_worker() -> Worker:
    """The arq worker whose start-up is running. arq passes on_startup only its ctx; its `main` coroutine,
    which calls on_startup, is the current task and holds the worker as `self`."""
    task = asyncio.current_task()
    frame = getattr(task.get_coro(), "cr_frame", None) if task is not None else None
    worker = frame.f_locals.get("self") if frame is not None else None
    if not isinstance(worker, Worker):
        raise RuntimeError("direct dispatch must be started from an arq worker's on_startup")
    return worker


async def start(ctx: dict[str, Any]) -> None:
    """on_startup: start this worker's consumer (ctx holds the runtime, and the worker when known)."""
    worker = ctx.get("worker") or _current_worker()
    consumer = Consumer(worker, ctx["runtime"])
    ctx["dispatch"] = consumer
    if ctx.get("embedded"):
        ctx["runtime"].local_runner = consumer  # the API's triggers hand their runs over directly


async def stop(ctx: dict[str, Any]) -> None:
    """on_shutdown: stop the consumer."""
    consumer: Consumer | None = ctx.pop("dispatch", None)
    if consumer is not None:
        rt: Runtime = ctx["runtime"]
        if rt.local_runner is consumer:
            rt.local_runner = None
        await consumer.stop()
