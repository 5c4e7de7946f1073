"""A job's details (runs with paging, their details, the duration chart) and the activity log."""

from __future__ import annotations

import re

from playwright.async_api import Page, expect

from tests.browser.helpers import Dashboard, create_job, rest, sign_in, wait_idle

RUNS = 12


async def run_times(dashboard: Dashboard, job_id: str, times: int) -> None:
    """Trigger one run after another (a trigger while running is refused), each to its end."""
    for done in range(1, times + 1):
        response = await rest(dashboard, "POST", f"/api/jobs/{job_id}/trigger")
        assert response.status_code == 200, response.text
        await wait_idle(dashboard, job_id, runs=done)


async def test_details_page_through_runs_and_chart_their_durations(page: Page, dashboard: Dashboard) -> None:
    job = await create_job(dashboard, "paged", payload={"seconds": 0.01, "summary": "line one\nline two"})
    await run_times(dashboard, job["id"], RUNS)
    await sign_in(page, dashboard)
    await page.locator(f"tr[data-job-id='{job['id']}']").get_by_role("button", name="Details").click()
    dialog = page.locator("#job-dialog")
    await expect(dialog.get_by_role("heading", name=job["name"])).to_be_visible()
    await expect(dialog.locator(".chart rect.bar.result-success")).to_have_count(RUNS)
    await expect(dialog.get_by_role("img", name=f"Durations of the last {RUNS} finished runs")).to_be_visible()
    runs = dialog.locator(".runs-table tbody tr")
    await expect(runs).to_have_count(10)
    await expect(dialog.locator(".pager .range")).to_have_text(f"1–10 of {RUNS}")
    await expect(dialog.get_by_role("button", name="Newer")).to_be_disabled()
    await expect(dialog.get_by_role("button", name="Delete…")).to_be_enabled()
    await runs.first.locator("summary").click()
    await expect(runs.first.locator(".run-details")).to_have_text("line one\nline two")
    await dialog.get_by_role("button", name="Older").focus()
    await page.keyboard.press("Enter")
    await expect(dialog.locator(".pager .range")).to_have_text(f"11–{RUNS} of {RUNS}")
    await expect(runs).to_have_count(RUNS - 10)
    await expect(dialog.get_by_role("button", name="Older")).to_be_disabled()
    await expect(dialog.get_by_role("button", name="Newer")).to_be_focused()  # the focus stays in the pager
    await dialog.get_by_role("button", name="Newer").click()
    await expect(dialog.locator(".pager .range")).to_have_text(f"1–10 of {RUNS}")

    # A run started elsewhere shows up in the open dialog, then its result.
    await rest(dashboard, "POST", f"/api/jobs/{job['id']}/trigger")
    await expect(dialog.locator(".pager .range")).to_have_text(f"1–10 of {RUNS + 1}")
    await expect(dialog.locator(".chart rect.bar")).to_have_count(RUNS + 1)
    await page.keyboard.press("Escape")
    await expect(dialog).not_to_be_visible()


async def test_a_failed_run_is_charted_as_an_error(page: Page, dashboard: Dashboard) -> None:
    job = await create_job(dashboard, "failing", type="test_fail", payload={"message": "disk full"})
    await run_times(dashboard, job["id"], 2)
    await sign_in(page, dashboard)
    row = page.locator(f"tr[data-job-id='{job['id']}']")
    await expect(row.locator(".last-run .result")).to_have_text("error")
    await row.get_by_role("button", name="Details").click()
    dialog = page.locator("#job-dialog")
    await expect(dialog.locator(".chart rect.bar.result-error")).to_have_count(2)
    await dialog.locator(".runs-table summary").first.click()
    await expect(dialog.locator(".run-details").first).to_contain_text("disk full")


async def test_the_activity_view_lists_the_audit_log_page_by_page(page: Page, dashboard: Dashboard) -> None:
    job = await create_job(dashboard, "audited", interval="1h")
    for _ in range(14):  # 28 entries: more than one page of 25
        await rest(dashboard, "POST", f"/api/jobs/{job['id']}/start")
        await rest(dashboard, "POST", f"/api/jobs/{job['id']}/stop")
    await sign_in(page, dashboard)
    await page.get_by_role("button", name="Activity").click()
    view = page.locator("#activity-view")
    await expect(page.locator("#jobs-view")).to_be_hidden()
    await expect(page.get_by_role("button", name="Activity")).to_have_attribute("aria-current", "page")
    rows = view.locator("tbody tr")
    await expect(rows).to_have_count(25)
    first = rows.first
    await expect(first).to_contain_text("jobs.stop")
    await expect(first).to_contain_text(job["id"])
    await expect(first).to_contain_text("5")  # the actor: the token's subject
    total = (await rest(dashboard, "GET", "/api/activity?limit=1")).json()["total"]
    await expect(view.locator(".range")).to_have_text(f"1–25 of {total}")
    await view.get_by_role("button", name="Older").click()
    await expect(view.locator(".range")).to_have_text(re.compile(rf"^26–\d+ of {total}$"))
    await page.get_by_role("button", name="Jobs", exact=True).click()
    await expect(page.locator("#jobs-view")).to_be_visible()


async def test_a_builtin_job_can_be_stopped_but_not_deleted(page: Page, dashboard: Dashboard) -> None:
    await sign_in(page, dashboard)
    await page.locator("tr[data-job-id='cleanup-job-logs']").get_by_role("button", name="Details").click()
    dialog = page.locator("#job-dialog")
    await expect(dialog.get_by_role("button", name="Stop schedule")).to_be_enabled()
    await expect(dialog.get_by_role("button", name="Start schedule")).to_be_disabled()
    await expect(dialog.get_by_role("button", name=re.compile("Delete"))).to_have_count(0)
