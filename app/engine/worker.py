"""The arq workers: a standalone worker process (`jobs-gateway worker`) and the API's embedded one.

Both are `WakingWorker`s (app.engine.waking) with two arq functions, `fire_job` (app.engine.fires) and
`start_later` (app.engine.later_runs), one consumer of triggers (app.engine.consumer) and one listener of cancel
requests (app.engine.cancels). A standalone worker also does what the API's start-up does in an
API process: it checks the schema, connects the database, calls the entry point's `prepare` (which loads the job
types and registers the built-in jobs), reconciles the schedule and runs the safety nets (app.engine.loops).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import logging.config
from collections.abc import Awaitable, Callable
from typing import Any

import uvloop
from arq.worker import func

from app.adapters.arq import WORKER_KEY, ArqWorker, arq_log_config
from app.engine import cancels, context, loops, scheduler, threads, triggers
from app.engine.consumer import Consumer
from app.engine.fires import fire_job
from app.engine.later_runs import start_later
from app.engine.metrics_server import WorkerMetricsServer
from app.engine.runner import RunHandler
from app.engine.waking import WakingWorker
from app.platform import db, gc_tuning
from app.platform.aio import cancel_and_wait
from app.platform.config import Settings
from app.platform.logs import configure_logging
from app.platform.redis_pool import bound, connect_redis, job_deserializer, job_serializer, worker_redis_settings
from app.platform.runtime import Runtime

log = logging.getLogger(__name__)

# The entry point's start-up work once the database is connected: load the job types, register the built-in
# jobs; returns how to run a job type's handler.
Prepare = Callable[[Runtime], Awaitable[RunHandler]]

# Our own per-job timeout ends runs; arq's is a backstop (a run longer than a day is cut off as
# `worker shut down`). It also bounds how long a killed worker's queue entry lingers if no reaper
# has forgotten it.
ARQ_TIMEOUT_SECONDS = 24 * 3600
RESTART_DELAY_SECONDS = 1.0


def options(settings: Settings) -> dict[str, Any]:
    """The arq Worker's options from Settings. max_tries=1: arq must never silently re-run a lost run; the reaper
    records it instead, and the job's retry policy (app.engine.later) or its next fire runs it again."""
    per_function = {"timeout": ARQ_TIMEOUT_SECONDS, "max_tries": 1, "keep_result": 0}
    return {
        "functions": [func(fire_job, **per_function), func(start_later, **per_function)],  # type: ignore[arg-type]
        "redis_settings": worker_redis_settings(settings),
        "poll_delay": settings.worker_poll_delay,
        "idle_poll_seconds": settings.worker_idle_poll_seconds,
        "max_jobs": settings.worker_max_jobs,
        "keep_result": 0,
        "max_tries": 1,
        "job_timeout": ARQ_TIMEOUT_SECONDS,
        "job_completion_wait": settings.shutdown_grace_seconds,
        "health_check_interval": 30,
        "job_serializer": job_serializer,
        "job_deserializer": job_deserializer,
    }


async def _start_consumer(ctx: dict[str, Any]) -> None:
    """on_startup of both kinds: this worker's consumer of triggers (and, embedded, the API's own triggers), and
    its listener of cancel requests."""
    worker = context.of(ctx)
    arq_worker: ArqWorker = ctx[WORKER_KEY]
    worker.cancel_listener = cancels.Listener(worker.rt)
    worker.consumer = Consumer(arq_worker, worker.rt, worker.run_handler)
    if worker.embedded:
        triggers.set_local_runner(worker.rt, worker.consumer)


async def _stop_consumer(ctx: dict[str, Any]) -> None:
    worker = context.of(ctx)
    consumer, worker.consumer = worker.consumer, None
    if consumer is not None:
        if triggers.local_runner(worker.rt) is consumer:
            triggers.set_local_runner(worker.rt, None)
        await consumer.stop()
    # Last: the runs still finishing meanwhile can still be cancelled.
    listener, worker.cancel_listener = worker.cancel_listener, None
    if listener is not None:
        await listener.stop()


# --- Standalone ------------------------------------------------------------------------------------------------


def run_standalone(settings: Settings, *, prepare: Prepare) -> None:
    """`jobs-gateway worker`: a worker process, as arq's CLI would run one (same logging, same signal handling:
    SIGTERM/SIGINT let runs finish within SHUTDOWN_GRACE_SECONDS), woken on new work."""
    logging.config.dictConfig(arq_log_config())
    # uvloop, as uvicorn gives the API (and its embedded worker): a run costs the worker less CPU.
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)

    async def on_startup(ctx: dict[str, Any]) -> None:
        configure_logging(settings)
        await db.ensure_current(settings)
        await db.connect(settings)
        await bound(ctx["redis"], settings)  # bounded like the API's (REDIS_POOL_SIZE), with a read timeout
        rt = Runtime(settings=settings, redis=ctx["redis"])
        worker = context.WorkerContext(rt=rt, run_handler=await prepare(rt), embedded=False)
        ctx[context.KEY] = worker
        threads.install(asyncio.get_running_loop())
        await scheduler.reconcile_all(rt)
        worker.loops = loops.start(rt)
        worker.metrics_server = WorkerMetricsServer.start(settings)
        await _start_consumer(ctx)
        # As the API does once started (app.platform.gc_tuning): a full collection walking the start-up heap
        # otherwise lands on a second's burst of fires every few seconds.
        worker.gc_thresholds = gc_tuning.tune_for_serving()

    async def on_shutdown(ctx: dict[str, Any]) -> None:
        worker = ctx.get(context.KEY)
        if isinstance(worker, context.WorkerContext):
            if worker.gc_thresholds is not None:
                gc_tuning.restore(worker.gc_thresholds)
            await _stop_consumer(ctx)
            if worker.metrics_server is not None:
                worker.metrics_server.close()
            await loops.stop(worker.loops)
        await db.disconnect()

    try:
        WakingWorker(**options(settings), on_startup=on_startup, on_shutdown=on_shutdown).run()
    finally:
        asyncio.set_event_loop(None)
        loop.close()


# --- Embedded in an API process ---------------------------------------------------------------------------------


async def build_embedded(rt: Runtime, run_handler: RunHandler) -> WakingWorker:
    """A worker living inside the API process, sharing its runtime, database and start-up work (its own start-up
    and shutdown only run the consumer). Its pool is connected here, not lazily in arq's poll task: arq leaks a
    pool whose creation is cancelled by an early shutdown."""
    pool = await connect_redis(rt.settings, for_worker=True)
    worker_context = context.WorkerContext(rt=rt, run_handler=run_handler, embedded=True)
    return WakingWorker(
        **options(rt.settings),
        on_startup=_start_consumer,
        on_shutdown=_stop_consumer,
        redis_pool=pool,
        ctx={context.KEY: worker_context},
        handle_signals=False,
    )


async def shut_down(worker: ArqWorker, grace: float) -> None:
    """Stop taking runs, let running ones finish within `grace`, then cancel (they record `worker shut down`)."""
    worker.stop_accepting()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(grace):
            while worker.running():  # noqa: ASYNC110 - arq offers no event
                await asyncio.sleep(0.05)
    # arq's close() cancels its poll loop and the runs once, without waiting, then closes the pool,
    # which can strand a pipeline mid-reset (a leaked connection); end them for sure first.
    if worker.poll_task is not None:
        await cancel_and_wait(worker.poll_task)
    await cancel_and_wait(*worker.running())
    await worker.close()


class EmbeddedWorker:
    """The API process's worker, replaced by a fresh one if it ever dies (Redis gone for too long)."""

    def __init__(self, rt: Runtime, run_handler: RunHandler, worker: WakingWorker) -> None:
        self._rt = rt
        self._run_handler = run_handler
        self._worker: WakingWorker | None = worker
        self._task = asyncio.create_task(self._supervise(), name="embedded-worker")

    @classmethod
    async def start(cls, rt: Runtime, run_handler: RunHandler) -> EmbeddedWorker:
        # The first worker is built here, in the caller's task, so that an early shutdown never
        # cancels a pool half-way through its creation.
        return cls(rt, run_handler, await build_embedded(rt, run_handler))

    async def _supervise(self) -> None:
        while True:
            try:
                if self._worker is None:
                    self._worker = await build_embedded(self._rt, self._run_handler)
                await self._worker.async_run()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("embedded worker stopped; starting a new one shortly")
                await self._discard()
            await asyncio.sleep(RESTART_DELAY_SECONDS)

    async def _discard(self) -> None:
        worker, self._worker = self._worker, None
        if worker is not None:
            # arq's close() runs on_shutdown only after a Redis call that fails while Redis is down: stop the
            # trigger consumer first, or it would outlive its worker and pop runs for it.
            worker.stop_accepting()
            with contextlib.suppress(Exception):
                await _stop_consumer(worker.ctx)
            with contextlib.suppress(Exception):
                await worker.close()

    def alive(self) -> bool:
        """For /readyz: the supervisor runs and holds a worker whose poll loop has not ended."""
        worker = self._worker
        if self._task.done() or worker is None:
            return False
        return worker.poll_task is None or not worker.poll_task.done()

    async def stop(self, grace: float) -> None:
        worker = self._worker
        if worker is not None:
            await shut_down(worker, grace)
        await cancel_and_wait(self._task)
