"""Job types that tests (and their worker processes, via JOB_TYPE_MODULES) can run."""

from __future__ import annotations

import asyncio
import contextlib
import time

from pydantic import Field

from app.job_types.registry import Payload, RunContext, job_type


class SleepPayload(Payload):
    seconds: float = Field(default=0.0, ge=0)
    summary: str = "slept"


@job_type("test_sleep", "Sleeps for `seconds`, then returns `summary`", SleepPayload)
async def sleep_handler(ctx: RunContext) -> str:
    payload: SleepPayload = ctx.payload
    await asyncio.sleep(payload.seconds)
    return payload.summary


class FailPayload(Payload):
    message: str = "boom"


@job_type("test_fail", "Raises RuntimeError(message)", FailPayload)
async def fail_handler(ctx: RunContext) -> str:
    payload: FailPayload = ctx.payload
    raise RuntimeError(payload.message)


class FlakyPayload(Payload):
    fail_attempts: int = Field(default=2, ge=0)
    seconds: float = Field(default=0.0, ge=0)


@job_type("test_flaky", "Fails its first `fail_attempts` attempts, then succeeds", FlakyPayload)
async def flaky_handler(ctx: RunContext) -> str:
    payload: FlakyPayload = ctx.payload
    await asyncio.sleep(payload.seconds)
    if ctx.attempt <= payload.fail_attempts:
        raise RuntimeError(f"attempt {ctx.attempt} failed")
    return f"attempt {ctx.attempt} succeeded"


@job_type("test_block", "Blocks until cancelled; for timeout and shutdown tests")
async def block_handler(ctx: RunContext) -> str:
    await asyncio.Event().wait()
    return "unreachable"


class OwnTimeoutPayload(Payload):
    seconds: float = 0.05


@job_type("test_own_timeout", "Raises its own TimeoutError, unrelated to the run's timeout", OwnTimeoutPayload)
async def own_timeout_handler(ctx: RunContext) -> str:
    payload: OwnTimeoutPayload = ctx.payload
    await asyncio.wait_for(asyncio.Event().wait(), payload.seconds)
    return "unreachable"


class ThreadPayload(Payload):
    seconds: float = Field(default=1.0, ge=0)


@job_type("test_thread", "Sleeps `seconds` in a thread (asyncio.to_thread), which no cancellation stops", ThreadPayload)
async def thread_handler(ctx: RunContext) -> str:
    payload: ThreadPayload = ctx.payload
    await asyncio.to_thread(time.sleep, payload.seconds)
    return "slept in a thread"


class StubbornPayload(Payload):
    seconds: float = Field(default=1.0, ge=0)


@job_type("test_stubborn", "Blocks until cancelled, then ignores every cancellation for `seconds`", StubbornPayload)
async def stubborn_handler(ctx: RunContext) -> str:
    payload: StubbornPayload = ctx.payload
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        loop = asyncio.get_running_loop()
        until = loop.time() + payload.seconds
        while (left := until - loop.time()) > 0:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(left)
        raise
    return "unreachable"


class ChattyPayload(Payload):
    lines: int = Field(default=10, ge=0)
    pause: float = Field(default=0.0, ge=0)  # seconds slept after each line
    progress: bool = True  # report progress (i of lines) with every line
    output: dict[str, object] | None = None  # returned as the run's output
    fail: str | None = None  # raise RuntimeError(fail) at the end, from a helper function
    warning: str | None = None  # logged at warning level after the lines


def _explode(message: str) -> None:
    raise RuntimeError(message)


@job_type(
    "test_chatty", "Logs `lines` lines (fields i), pausing `pause` s after each, then returns or fails", ChattyPayload
)
async def chatty_handler(ctx: RunContext) -> str | dict[str, object]:
    payload: ChattyPayload = ctx.payload
    for i in range(1, payload.lines + 1):
        ctx.log.info("line %d of %d", i, payload.lines, i=i)
        if payload.progress:
            ctx.progress(i, payload.lines, note=f"line {i}")
        if payload.pause:
            await asyncio.sleep(payload.pause)
    if payload.warning is not None:
        ctx.log.warning(payload.warning, attempt=ctx.attempt)
    if payload.fail is not None:
        _explode(payload.fail)
    if payload.output is not None:
        return payload.output
    return f"logged {payload.lines} lines"


class ThreadLogPayload(Payload):
    lines: int = Field(default=50, ge=0)


@job_type("test_thread_log", "Logs `lines` lines from a thread, then one from the handler's task", ThreadLogPayload)
async def thread_log_handler(ctx: RunContext) -> str:
    payload: ThreadLogPayload = ctx.payload

    def work() -> None:
        for i in range(payload.lines):
            ctx.log.info("from a thread %d", i)

    await asyncio.to_thread(work)
    ctx.log.info("back")
    return "logged from a thread"
