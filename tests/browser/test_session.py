"""Signing in with a token, refusals, expiry, and the live connection surviving a server restart."""

from __future__ import annotations

import re
import shutil
from datetime import timedelta
from pathlib import Path

import jwt
from playwright.async_api import Page, expect

from tests.browser.helpers import Dashboard, create_job, rest, sign_in
from tests.conftest import make_settings
from tests.support.processes import ApiProcess
from tests.support.servers import RedisServer, free_port


async def expect_signed_out(page: Page, reason: str | re.Pattern[str]) -> None:
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    await expect(page.locator("#signin-reason")).to_have_text(reason)
    await expect(page.locator("#connection")).to_have_text("Signed out")
    await expect(page.locator("#jobs-view")).to_be_hidden()
    assert await page.evaluate("sessionStorage.length") == 0


async def test_a_badly_signed_token_is_refused_with_the_reason(page: Page, dashboard: Dashboard) -> None:
    forged = jwt.encode({"sub": "1", "permissions": ["settings.update"], "exp": 4_000_000_000}, "x" * 40)
    await page.goto(dashboard.page_url)
    await page.get_by_label("Access token").fill(forged)
    await page.get_by_role("button", name="Sign in").click()
    await expect_signed_out(page, re.compile("^The server refused this token: .*signature", re.IGNORECASE))
    await expect(page.locator("tr[data-job-id]")).to_have_count(0)


async def test_a_token_without_the_permission_is_refused(page: Page, dashboard: Dashboard) -> None:
    await page.goto(dashboard.page_url)
    await page.get_by_label("Access token").fill(dashboard.token(permissions=["billing.read"]))
    await page.get_by_role("button", name="Sign in").click()
    await expect_signed_out(page, re.compile("^The server refused this token: .*'jobs.read'.*settings.update"))


async def test_a_read_only_token_watches_and_is_told_what_it_may_not_do(page: Page, dashboard: Dashboard) -> None:
    job = await create_job(dashboard, "read-only", name="Read Only")
    await sign_in(page, dashboard, dashboard.token(permissions=["jobs.read"]))
    row = page.locator(f"tr[data-job-id='{job['id']}']")
    await expect(row).to_have_count(1)
    await row.get_by_role("button", name="Run Read Only now").click()
    # The mutation's PermissionDenied answer is shown; the session goes on.
    await expect(page.locator("#notices")).to_contain_text("Permission 'jobs.trigger' is required")
    await expect(page.locator("#connection")).to_have_text("Live")
    logs = await rest(dashboard, "GET", f"/api/jobs/{job['id']}/logs")
    assert logs.json()["total"] == 0


async def test_an_expired_token_is_refused(page: Page, dashboard: Dashboard) -> None:
    await page.goto(dashboard.page_url)
    await page.get_by_label("Access token").fill(dashboard.token(ttl=timedelta(seconds=-60)))
    await page.get_by_role("button", name="Sign in").click()
    await expect_signed_out(page, re.compile("^The server refused this token: .*expired", re.IGNORECASE))


async def test_the_token_lasts_for_the_tab_and_ends_with_its_expiry(page: Page, dashboard: Dashboard) -> None:
    await sign_in(page, dashboard, dashboard.token(ttl=timedelta(seconds=6)))
    await page.reload()  # kept in sessionStorage: still signed in
    await expect(page.locator("#connection")).to_have_text("Live")
    await expect(page.locator("tr[data-job-id='metadata-sync']")).to_have_count(1)
    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    await expect_signed_out(page, "Your token expired. Paste a new one to go on.")
    await page.wait_for_timeout(2500)
    assert sockets == [], "the page kept connecting after the session ended"


async def test_signing_out_forgets_the_token(page: Page, dashboard: Dashboard) -> None:
    await sign_in(page, dashboard)
    await page.get_by_role("button", name="Sign out").click()
    await expect_signed_out(page, "You signed out.")
    await page.reload()
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()


async def test_the_page_reconnects_by_itself_after_the_server_restarts(
    page: Page, sqlite_template: Path, tmp_path: Path
) -> None:
    database = tmp_path / "jobs.sqlite3"
    shutil.copyfile(sqlite_template, database)
    with RedisServer() as redis:
        settings = make_settings(database_url=f"sqlite://{database}", redis_url=redis.url)
        api = ApiProcess(settings, tmp_path, free_port())
        with api:
            own = Dashboard(api, settings)
            job = await create_job(own, "after-restart", payload={"seconds": 0.5})
            await sign_in(page, own)
            await page.evaluate("window.notReloaded = true")
            api.stop()
            await expect(page.locator("#connection")).to_have_text(re.compile("^Reconnecting"))
            api.start()
            await expect(page.locator("#connection")).to_have_text("Live", timeout=40_000)
            row = page.locator(f"tr[data-job-id='{job['id']}']")
            assert (await rest(own, "POST", f"/api/jobs/{job['id']}/trigger")).status_code == 200
            await expect(row.locator(".last-run .result")).to_have_text("success")
            assert await page.evaluate("window.notReloaded === true")


async def test_an_unreachable_server_at_sign_in_keeps_the_token_for_a_retry(
    page: Page, dashboard: Dashboard, expected_console_errors: list[str]
) -> None:
    expected_console_errors.append("net::ERR_FAILED")
    await sign_in(page, dashboard)
    await page.route("**/graphql", lambda route: route.abort())
    await page.reload()
    await expect(page.locator("#signin-reason")).to_have_text(
        "The server cannot be reached. Press Sign in to try again."
    )
    assert await page.evaluate("sessionStorage.length") == 1
    await page.unroute("**/graphql")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#connection")).to_have_text("Live")
