"""Job types the benchmarks run (loaded by the processes they start, through JOB_TYPE_MODULES)."""

from __future__ import annotations

import asyncio
import hashlib
import time

from pydantic import Field

from app.job_types.registry import Payload, RunContext, job_type

PROBE_TYPE = "bench_probe"


@job_type(PROBE_TYPE, "Does nothing; its result is the wall-clock time its first line ran (for latency benchmarks)")
async def probe_handler(ctx: RunContext) -> str:  # noqa: ARG001 - the signature every handler has
    # time.time() is CLOCK_REALTIME, comparable across the processes of one machine.
    return f"{time.time():.6f}"


class WorkPayload(Payload):
    steps: int = Field(default=10_000, ge=1)
    log_every: int = Field(default=0, ge=0)  # a ctx.log line every this many steps (0: none)
    progress_every: int = Field(default=0, ge=0)  # a ctx.progress report every this many steps (0: none)


WORK_TYPE = "bench_work"
# Hashing 128 KiB takes about 0.1 ms: a stand-in for a handler's unit of work between two lines (a query, a request).
_BLOCK = b"x" * 128 * 1024


@job_type(WORK_TYPE, "Hashes `steps` small blocks, logging and reporting progress as told (B9)", WorkPayload)
async def work_handler(ctx: RunContext) -> str:
    payload: WorkPayload = ctx.payload
    for step in range(1, payload.steps + 1):
        hashlib.sha256(_BLOCK).digest()
        if payload.log_every and step % payload.log_every == 0:
            ctx.log.info("step %d of %d", step, payload.steps, step=step)
        if payload.progress_every and step % payload.progress_every == 0:
            ctx.progress(step, payload.steps)
        if step % 100 == 0:
            await asyncio.sleep(0)  # a handler awaits now and then: its I/O
    return f"{payload.steps} steps"
