"""REST calls the browser tests make as "another client", and waits on the service's own answers."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import timedelta
from itertools import count
from typing import Any

import httpx
from playwright.async_api import Page, expect

from app.platform.config import Settings
from tests.conftest import make_token
from tests.support.processes import ApiProcess

_ids = count(1)


@dataclass
class Dashboard:
    """The running service: its base URL, settings and the page's URL."""

    api: ApiProcess
    settings: Settings

    @property
    def url(self) -> str:
        return self.api.url

    @property
    def page_url(self) -> str:
        return f"{self.api.url}/dashboard"

    def token(self, ttl: timedelta = timedelta(hours=1), permissions: list[str] | None = None) -> str:
        return make_token(self.settings, ttl=ttl, permissions=permissions)

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token()}"}


async def sign_in(page: Page, dashboard: Dashboard, token: str | None = None) -> None:
    await page.goto(dashboard.page_url)
    await page.get_by_label("Access token").fill(token or dashboard.token())
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#connection")).to_have_text("Live")


def unique_id(prefix: str) -> str:
    return f"{prefix}-{next(_ids)}-{time.monotonic_ns() % 1_000_000}"


async def rest(dashboard: Dashboard, method: str, path: str, **kwargs: Any) -> httpx.Response:
    async with httpx.AsyncClient(base_url=dashboard.url, headers=dashboard.auth(), timeout=10) as client:
        return await client.request(method, path, **kwargs)


async def create_job(dashboard: Dashboard, prefix: str, **fields: Any) -> dict[str, Any]:
    """A job of the test_sleep type that only runs when triggered (unless the test says otherwise)."""
    body: dict[str, Any] = {
        "id": unique_id(prefix),
        "name": fields.pop("name", prefix.replace("-", " ").title()),
        "type": "test_sleep",
        "interval": "24h",
        "enabled": False,
        "payload": {"seconds": 0},
    }
    body.update(fields)
    response = await rest(dashboard, "POST", "/api/jobs", json=body)
    assert response.status_code == 201, response.text
    job: dict[str, Any] = response.json()
    return job


async def wait_idle(dashboard: Dashboard, job_id: str, runs: int = 1, timeout: float = 20.0) -> None:
    """Until the job has `runs` finished runs and none in progress."""
    deadline = time.monotonic() + timeout
    while True:
        job = (await rest(dashboard, "GET", f"/api/jobs/{job_id}")).json()
        logs = (await rest(dashboard, "GET", f"/api/jobs/{job_id}/logs?limit=1")).json()
        if not job["running"] and logs["total"] >= runs and logs["logs"][0]["result"] is not None:
            return
        assert time.monotonic() < deadline, f"{job_id} still running or short of {runs} runs: {job}"
        await asyncio.sleep(0.05)
