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
