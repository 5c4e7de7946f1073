"""Take docs/dashboard.png, the README's screenshot, from a real server with a few jobs and runs.

.venv/bin/python -m tests.browser.make_screenshot
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from playwright.async_api import async_playwright

from app.platform import db
from tests.browser.conftest import CHROMIUM, LAUNCH_ARGS
from tests.browser.helpers import Dashboard, rest, sign_in, wait_idle
from tests.conftest import make_settings
from tests.support.processes import ROOT, ApiProcess
from tests.support.servers import RedisServer, free_port

OUTPUT = ROOT / "docs" / "dashboard.png"
JOBS = [
    {
        "id": "cleanup-expired-listings",
        "name": "Cleanup Expired Listings",
        "description": "Remove listings older than 30 days",
        "type": "cleanup_expired_listings",
        "interval": "24h",
        "payload": {"days_old": 30},
    },
    {
        "id": "weekly-digest",
        "name": "Weekly Digest",
        "type": "send_notifications",
        "schedule": "0 8 * * 1",
        "payload": {"template": "weekly-digest"},
    },
    {
        "id": "search-index",
        "name": "Update Search Index",
        "type": "update_search_index",
        "schedule": "*/15 * * * *",
        "enabled": False,
    },
]
RUNS = {"metadata-sync": 3, "cleanup-expired-tokens": 1, "cleanup-expired-listings": 2, "search-index": 1}


async def populate(dashboard: Dashboard) -> None:
    for job in JOBS:
        response = await rest(dashboard, "POST", "/api/jobs", json=job)
        assert response.status_code == 201, response.text
    for job_id, times in RUNS.items():
        for done in range(1, times + 1):
            await rest(dashboard, "POST", f"/api/jobs/{job_id}/trigger")
            await wait_idle(dashboard, job_id, runs=done)


async def shoot(dashboard: Dashboard) -> None:
    await populate(dashboard)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        page = await (await browser.new_context(viewport={"width": 1280, "height": 720})).new_page()
        await sign_in(page, dashboard)
        await page.locator("tr[data-job-id='search-index']").wait_for()
        OUTPUT.parent.mkdir(exist_ok=True)
        await page.screenshot(path=str(OUTPUT))
        await browser.close()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp, RedisServer() as redis:
        workdir = Path(tmp)
        settings = make_settings(
            database_url=f"sqlite://{workdir / 'jobs.sqlite3'}", redis_url=redis.url, job_type_modules=[]
        )
        asyncio.run(db.migrate(settings))
        with ApiProcess(settings, workdir, free_port()) as api:
            asyncio.run(shoot(Dashboard(api, settings)))
    print(f"wrote {OUTPUT}")


if __name__ == "__main__":
    main()
