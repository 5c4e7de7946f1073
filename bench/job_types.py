"""Job types the benchmarks run (loaded by the processes they start, through JOB_TYPE_MODULES)."""

from __future__ import annotations

import time

from app.job_types.registry import RunContext, job_type

PROBE_TYPE = "bench_probe"


@job_type(PROBE_TYPE, "Does nothing; its result is the wall-clock time its first line ran (for latency benchmarks)")
async def probe_handler(ctx: RunContext) -> str:  # noqa: ARG001 - the signature every handler has
    # time.time() is CLOCK_REALTIME, comparable across the processes of one machine.
    return f"{time.time():.6f}"
