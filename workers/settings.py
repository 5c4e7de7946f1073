"""arq worker configuration, built from Settings for the CLI worker and the embedded one alike."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import logging.config
from typing import Any

import uvloop
from arq import Worker
from arq.logs import default_log_config
from arq.worker import func
from tortoise import Tortoise

from app.background import start_background_loops, stop_background_loops
from app.job_types import registry
from app.jobs import scheduler
from app.jobs import service as jobs_service
from app.observability.worker_metrics import WorkerMetricsServer
from app.platform import db, gc_tuning
from app.platform.aio import cancel_and_wait
from app.platform.config import Settings, get_settings
from app.platform.logs import configure_logging
from app.platform.redis_pool import SOCKET_TIMEOUT_SECONDS, bounded_pool, connect_redis, worker_redis_settings
from app.platform.runtime import Runtime
from workers import dispatch
from workers.tasks import fire_job, run_job
from workers.waking import WakingWorker

log = logging.getLogger(__name__)
BUILTIN_HANDLERS = "workers.handlers"

# Our own per-job timeout ends runs; arq's is a backstop (a run longer than a day is cut off as
# `worker shut down`). It also bounds how long a killed worker's queue entry lingers if no reaper
# has forgotten it.
ARQ_TIMEOUT_SECONDS = 24 * 3600


async def on_startup(ctx: dict[str, Any]) -> None:
    """Start-up of a standalone `arq workers.WorkerSettings` process (the embedded worker has none:
    the API's lifespan does this work)."""
    settings = get_settings()
    configure_logging(settings)
    await db.ensure_current(settings)
    await Tortoise.init(config=db.tortoise_config(settings), _enable_global_fallback=True)
    registry.load([BUILTIN_HANDLERS, *settings.job_type_modules])
    ctx["redis"].connection_pool.connection_kwargs["socket_timeout"] = SOCKET_TIMEOUT_SECONDS
    await ctx["redis"].connection_pool.disconnect()  # connections made before (arq's ping) had no timeout
    # Bounded like the API's (REDIS_POOL_SIZE); nothing has used the pool since arq's ping.
    ctx["redis"].connection_pool = bounded_pool(ctx["redis"].connection_pool, settings)
    rt = Runtime(settings=settings, redis=ctx["redis"])
    ctx["runtime"] = rt
    await jobs_service.register_builtin_jobs()
    await scheduler.reconcile_all(rt)
    ctx["loops"] = start_background_loops(rt)
    ctx["metrics_server"] = WorkerMetricsServer.start(settings)
    await dispatch.start(ctx)
    # As the API does once started (app.platform.gc_tuning): without it, a full collection walking the start-up
    # heap took ~30 ms every ~8 s under 100 fires a second, landing on a second's burst of fires (B4).
    ctx["gc_thresholds"] = gc_tuning.tune_for_serving()


async def on_shutdown(ctx: dict[str, Any]) -> None:
    if "gc_thresholds" in ctx:
        gc_tuning.restore(ctx.pop("gc_thresholds"))
    await dispatch.stop(ctx)
    if ctx.get("metrics_server") is not None:
        ctx["metrics_server"].close()
    await stop_background_loops(ctx.get("loops", []))
    await Tortoise.close_connections()


def worker_options(settings: Settings) -> dict[str, Any]:
    # max_tries=1: arq must never silently re-run a lost run; the run wrapper records it instead.
    options = {"timeout": ARQ_TIMEOUT_SECONDS, "max_tries": 1, "keep_result": 0}
    return {
        "functions": [func(run_job, **options), func(fire_job, **options)],  # type: ignore[arg-type]
        "on_startup": on_startup,
        "on_shutdown": on_shutdown,
        "redis_settings": worker_redis_settings(settings),
        "poll_delay": settings.worker_poll_delay,
        "idle_poll_seconds": settings.worker_idle_poll_seconds,
        "max_jobs": settings.worker_max_jobs,
        "keep_result": 0,
        "max_tries": 1,
        "job_timeout": ARQ_TIMEOUT_SECONDS,
        "job_completion_wait": settings.shutdown_grace_seconds,
        "health_check_interval": 30,
    }


async def build_embedded_worker(rt: Runtime) -> WakingWorker:
    """A worker living inside the API process, sharing its runtime, database and start-up work.

    Its pool is connected here, not lazily in arq's poll task: arq leaks a pool whose creation is
    cancelled by an early shutdown.
    """
    # Its start-up and shutdown only run the consumer of direct triggers (workers.dispatch).
    options = {**worker_options(rt.settings), "on_startup": dispatch.start, "on_shutdown": dispatch.stop}
    pool = await connect_redis(rt.settings, for_worker=True)
    # `embedded`: its consumer also takes the API's own triggers directly (app.platform.runtime.LocalRunner).
    worker = WakingWorker(**options, redis_pool=pool, ctx={"runtime": rt, "embedded": True}, handle_signals=False)
    worker.ctx["worker"] = worker
    return worker


async def stop_embedded_worker(worker: Worker, grace: float) -> None:
    """Stop taking runs, let running ones finish within `grace`, then cancel (they record `worker shut down`)."""
    worker.allow_pick_jobs = False
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(grace):
            while any(not t.done() for t in worker.tasks.values()):  # noqa: ASYNC110 - arq offers no event
                await asyncio.sleep(0.05)
    # arq's close() cancels its poll loop and the runs once, without waiting, then closes the pool,
    # which can strand a pipeline mid-reset (a leaked connection); end them for sure first.
    if worker.main_task is not None:
        await cancel_and_wait(worker.main_task)
    await cancel_and_wait(*worker.tasks.values())
    await worker.close()


class EmbeddedWorker:
    """The API process's worker, replaced by a fresh one if it ever dies (Redis gone for too long)."""

    def __init__(self, rt: Runtime, worker: WakingWorker) -> None:
        self._rt = rt
        self._worker: WakingWorker | None = worker
        self._task = asyncio.create_task(self._supervise(), name="embedded-worker")

    @classmethod
    async def start(cls, rt: Runtime) -> EmbeddedWorker:
        # The first worker is built here, in the caller's task, so that an early shutdown never
        # cancels a pool half-way through its creation.
        return cls(rt, await build_embedded_worker(rt))

    async def _supervise(self) -> None:
        while True:
            try:
                if self._worker is None:
                    self._worker = await build_embedded_worker(self._rt)
                await self._worker.async_run()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("embedded worker stopped; starting a new one shortly")
                await self._discard()
            await asyncio.sleep(1.0)

    async def _discard(self) -> None:
        worker, self._worker = self._worker, None
        if worker is not None:
            # arq's close() runs on_shutdown only after a Redis call that fails while Redis is down: stop the
            # trigger consumer first, or it would outlive its worker and pop runs for it.
            worker.allow_pick_jobs = False
            with contextlib.suppress(Exception):
                await dispatch.stop(worker.ctx)
            with contextlib.suppress(Exception):
                await worker.close()

    def alive(self) -> bool:
        """For /readyz: the supervisor runs and holds a worker whose poll loop has not ended."""
        worker = self._worker
        if self._task.done() or worker is None:
            return False
        return worker.main_task is None or not worker.main_task.done()

    async def stop(self, grace: float) -> None:
        worker = self._worker
        if worker is not None:
            await stop_embedded_worker(worker, grace)
        await cancel_and_wait(self._task)


def settings_class() -> type:
    """`arq workers.WorkerSettings` reads this: the environment is read when arq asks, not at import.

    arq's CLI always builds its own Worker class, which polls every WORKER_POLL_DELAY; `jobs-gateway
    worker` (run_standalone) runs the same settings on the waking worker instead."""
    settings = get_settings()
    options = worker_options(settings)
    del options["idle_poll_seconds"]
    return type("WorkerSettings", (), options)


def run_standalone(settings: Settings) -> None:
    """`jobs-gateway worker`: a standalone worker process, as arq's CLI would run it (same logging, same
    signal handling: SIGTERM/SIGINT let runs finish within SHUTDOWN_GRACE_SECONDS), but woken on new work."""
    logging.config.dictConfig(default_log_config(verbose=False))
    # uvloop, as uvicorn gives the API (and its embedded worker): a run costs the worker less CPU.
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        worker = WakingWorker(**worker_options(settings))
        worker.ctx["worker"] = worker
        worker.run()
    finally:
        asyncio.set_event_loop(None)
        loop.close()
