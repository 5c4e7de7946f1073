"""Plain arq, configured from the environment: the baselines of B1, B4 and B5.

`arq bench.arq_baseline.WorkerSettings` with BENCH_REDIS_URL, BENCH_POLL_DELAY (arq's default 0.5) and
BENCH_CRON_JOBS (how many cron functions fire every second; 0 for none).
"""

from __future__ import annotations

import os
import time
from typing import Any, ClassVar

from arq.connections import RedisSettings
from arq.cron import CronJob, cron

CRON_LOG_KEY = "bench:cron-starts"


async def noop(ctx: dict[str, Any]) -> float:  # noqa: ARG001 - arq passes ctx
    """The handler's first line: when it started (CLOCK_REALTIME, comparable across processes)."""
    return time.time()


def _cron_function(n: int) -> Any:
    async def tick(ctx: dict[str, Any]) -> None:
        started = time.time()
        # The job id is cron:<name>:<scheduled ms>: lag = start - scheduled.
        await ctx["redis"].rpush(CRON_LOG_KEY, f"{ctx['job_id']} {started:.6f}")

    tick.__qualname__ = tick.__name__ = f"tick{n:03d}"
    return tick


def _cron_jobs() -> list[CronJob]:
    count = int(os.environ.get("BENCH_CRON_JOBS", "0"))
    return [cron(_cron_function(i), second=set(range(60)), microsecond=0) for i in range(count)]


class WorkerSettings:
    functions: ClassVar[list[Any]] = [noop]
    cron_jobs: ClassVar[list[CronJob]] = _cron_jobs()
    redis_settings = RedisSettings.from_dsn(os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
    poll_delay = float(os.environ.get("BENCH_POLL_DELAY", "0.5"))
    keep_result = 60
    max_tries = 1
