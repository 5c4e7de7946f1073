"""The jobs table in a real browser: built-in jobs, live running state, enabling and disabling."""

from __future__ import annotations

import re

from playwright.async_api import Page, WebSocketRoute, expect

from tests.browser.helpers import Dashboard, create_job, rest, sign_in, wait_idle

BUILTIN = {
    "metadata-sync": ("Metadata Sync", "every 6 hours", "0 */6 * * *"),
    "cleanup-expired-tokens": ("Cleanup Expired Tokens", "every day at 00:00", "0 0 * * *"),
    "cleanup-orphaned-files": ("Cleanup Orphaned Files", "every Sunday at 00:00", "0 0 * * 0"),
    "cleanup-job-logs": ("Cleanup Job Logs", "every day at 00:30", "30 0 * * *"),
}


async def mark_page(page: Page) -> None:
    """A value that survives only as long as the page is not reloaded."""
    await page.evaluate("window.notReloaded = true")


async def assert_not_reloaded(page: Page) -> None:
    assert await page.evaluate("window.notReloaded === true"), "the page was reloaded"


async def test_sign_in_lists_the_builtin_jobs_with_their_schedules(page: Page, dashboard: Dashboard) -> None:
    await sign_in(page, dashboard)
    for job_id, (name, words, raw) in BUILTIN.items():
        row = page.locator(f"tr[data-job-id='{job_id}']")
        await expect(row.locator(".job-name")).to_have_text(name)
        await expect(row.locator(".schedule-words")).to_have_text(words)
        await expect(row.locator(".schedule-raw")).to_have_text(raw)
        await expect(row.get_by_role("switch", name=f"{name} enabled")).to_be_checked()
        await expect(row.locator(".next-run time")).to_have_text(re.compile(r"^in \d"))
    assert await page.evaluate("sessionStorage.length") == 1


async def test_run_now_shows_running_then_the_result_without_reload(page: Page, dashboard: Dashboard) -> None:
    job = await create_job(dashboard, "run-now", payload={"seconds": 1.5, "summary": "slept well"})
    await sign_in(page, dashboard)
    await mark_page(page)
    row = page.locator(f"tr[data-job-id='{job['id']}']")
    await expect(row.locator(".last-run")).to_have_text("never")
    await row.get_by_role("button", name=f"Run {job['name']} now").click()
    await expect(row.locator(".status")).to_have_text("Running")
    await expect(row.locator("button.run-now")).to_be_disabled()
    await expect(row.locator(".status")).to_have_text("Idle")
    await expect(row.locator(".last-run .result")).to_have_text("success")
    await expect(row.locator(".last-run time")).to_have_text(re.compile(r"ago|now"))
    await expect(row.locator(".last-run .duration")).to_have_text(re.compile(r"^1\.\d s$"))
    await expect(row.locator("button.run-now")).to_be_enabled()
    await assert_not_reloaded(page)


async def test_a_trigger_from_another_client_appears_live(page: Page, dashboard: Dashboard) -> None:
    job = await create_job(dashboard, "rest-trigger", payload={"seconds": 1.0})
    await sign_in(page, dashboard)
    await mark_page(page)
    row = page.locator(f"tr[data-job-id='{job['id']}']")
    await expect(row.locator(".status")).to_have_text("Idle")
    response = await rest(dashboard, "POST", f"/api/jobs/{job['id']}/trigger")
    assert response.status_code == 200, response.text
    await expect(row.locator(".status")).to_have_text("Running")
    await expect(row.locator(".last-run .result")).to_have_text("success")
    await expect(row.locator(".status")).to_have_text("Idle")
    await assert_not_reloaded(page)


async def test_run_now_while_running_elsewhere_shows_a_calm_notice(page: Page, dashboard: Dashboard) -> None:
    job = await create_job(dashboard, "conflict", payload={"seconds": 3})
    muted = False

    def relay(ws: WebSocketRoute) -> None:
        # A live connection that stops delivering, so the page still believes the job is idle.
        server = ws.connect_to_server()
        ws.on_message(server.send)
        server.on_message(lambda message: None if muted else ws.send(message))

    await page.route_web_socket("**/graphql", relay)
    await sign_in(page, dashboard)
    muted = True
    assert (await rest(dashboard, "POST", f"/api/jobs/{job['id']}/trigger")).status_code == 200
    row = page.locator(f"tr[data-job-id='{job['id']}']")
    await expect(row.locator(".status")).to_have_text("Idle")
    await row.get_by_role("button", name=f"Run {job['name']} now").click()
    notice = page.locator("#notices .notice")
    await expect(notice).to_contain_text(f"{job['name']} is already running")
    await expect(notice).not_to_have_attribute("role", "alert")
    await expect(row.locator(".status")).to_have_text("Running")  # the page learnt of the run it had missed
    await expect(row.locator("button.run-now")).to_be_disabled()
    await wait_idle(dashboard, job["id"])


async def test_disabling_a_job_clears_its_next_run_and_enabling_brings_it_back(
    page: Page, dashboard: Dashboard
) -> None:
    job = await create_job(dashboard, "toggle", interval="1h", enabled=True)
    await sign_in(page, dashboard)
    row = page.locator(f"tr[data-job-id='{job['id']}']")
    switch = row.get_by_role("switch", name=f"{job['name']} enabled")
    await expect(row.locator(".next-run time")).to_have_text(re.compile(r"^in \d"))
    await switch.click()
    await expect(switch).not_to_be_checked()
    await expect(row.locator(".next-run")).to_have_text("not scheduled")
    stored = (await rest(dashboard, "GET", f"/api/jobs/{job['id']}")).json()
    assert (stored["enabled"], stored["nextRun"]) == (False, None)
    await switch.click()
    await expect(switch).to_be_checked()
    await expect(row.locator(".next-run time")).to_have_text(re.compile(r"^in \d"))
    assert (await rest(dashboard, "GET", f"/api/jobs/{job['id']}")).json()["nextRun"] is not None


async def test_a_change_made_by_another_client_moves_the_switch(page: Page, dashboard: Dashboard) -> None:
    job = await create_job(dashboard, "remote-toggle", interval="1h", enabled=True)
    await sign_in(page, dashboard)
    row = page.locator(f"tr[data-job-id='{job['id']}']")
    await expect(row.get_by_role("switch")).to_be_checked()
    assert (await rest(dashboard, "POST", f"/api/jobs/{job['id']}/stop")).status_code == 200
    await expect(row.get_by_role("switch")).not_to_be_checked()
    await expect(row.locator(".next-run")).to_have_text("not scheduled")


async def test_job_data_is_shown_as_text_never_as_markup(page: Page, dashboard: Dashboard) -> None:
    name = '<img src=x id=injected onerror="window.injected=1"><b>bold</b>'
    job = await create_job(dashboard, "markup", name=name, payload={"summary": "<script>window.injected=2</script>"})
    await rest(dashboard, "POST", f"/api/jobs/{job['id']}/trigger")
    await wait_idle(dashboard, job["id"])
    await sign_in(page, dashboard)
    row = page.locator(f"tr[data-job-id='{job['id']}']")
    await expect(row.locator(".job-name")).to_have_text(name)
    await row.get_by_role("button", name=f"Details of {name}").click()
    await expect(page.locator(".run-details").first).to_have_count(1)
    await page.locator("#job-dialog summary").first.click()
    await expect(page.locator(".run-details").first).to_have_text("<script>window.injected=2</script>")
    assert await page.locator("#injected, #job-dialog b, .jobs b").count() == 0
    assert await page.evaluate("window.injected === undefined")


async def test_a_job_created_by_another_client_appears_live(page: Page, dashboard: Dashboard) -> None:
    await sign_in(page, dashboard)
    await mark_page(page)
    job = await create_job(dashboard, "arrives-live", interval="5m", enabled=True)
    row = page.locator(f"tr[data-job-id='{job['id']}']")
    await expect(row.locator(".schedule-words")).to_have_text("every 5 minutes")
    await expect(row.get_by_role("switch")).to_be_checked()
    await assert_not_reloaded(page)
