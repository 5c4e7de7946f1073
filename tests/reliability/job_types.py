"""A job type for the reliability scenarios: it notes each execution in a file, independently of the
database, so that a scenario can tell which process ran what and whether anything ran twice."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from pydantic import Field

from app.job_types.registry import Payload, RunContext, job_type


class TracedPayload(Payload):
    seconds: float = Field(default=0.0, ge=0)
    trace: str = ""  # a file each execution appends "<job> <run id> <pid>" to, when set


@job_type("rel_traced", "Notes the execution in `trace`, sleeps `seconds`, returns `done`", TracedPayload)
async def traced_handler(ctx: RunContext) -> str:
    payload: TracedPayload = ctx.payload
    if payload.trace:
        await asyncio.to_thread(_note, Path(payload.trace), f"{ctx.job_id} {ctx.run_id} {os.getpid()}\n")
    await asyncio.sleep(payload.seconds)
    return "done"


def _note(trace: Path, line: str) -> None:
    with trace.open("a") as out:
        out.write(line)


def executions(trace: Path) -> list[tuple[str, int, int]]:
    """(job id, run id, pid) of every execution noted in `trace`."""
    if not trace.exists():
        return []
    rows = [line.split() for line in trace.read_text().splitlines() if line.strip()]
    return [(job, int(run), int(pid)) for job, run, pid in rows]
