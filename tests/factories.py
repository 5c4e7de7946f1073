"""Small async factories for rows the tests need (job creation through the API comes later)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from app.data.jobs import Job


async def make_job(**overrides: Any) -> Job:
    fields: dict[str, Any] = {
        "id": "test-job",
        "name": "Test Job",
        "description": "A job for tests",
        "type": "test_sleep",
        "payload": {},
        "schedule": "0 0 * * *",
        "enabled": True,
    }
    fields.update(overrides)
    return await Job.create(**fields)


async def wait_until(check: Callable[[], Awaitable[bool]], *, timeout: float = 10.0, interval: float = 0.02) -> None:
    """Poll until `check` holds; fail loudly with the timeout rather than hang."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


async def wait_for_logs(
    client: httpx.AsyncClient, job_id: str, headers: dict[str, str], count: int = 1, timeout: float = 10.0
) -> list[dict[str, Any]]:
    """Wait until the job has `count` completed runs; return its log entries, newest first."""
    logs: list[dict[str, Any]] = []

    async def done() -> bool:
        nonlocal logs
        logs = (await client.get(f"/api/jobs/{job_id}/logs", headers=headers)).json()["logs"]
        return sum(1 for entry in logs if entry["completedAt"]) >= count

    await wait_until(done, timeout=timeout)
    return logs
