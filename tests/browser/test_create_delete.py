"""Creating a job from a type's JSON Schema, with the API's field errors, and deleting it."""

from __future__ import annotations

import re

from playwright.async_api import Page, expect

from tests.browser.helpers import Dashboard, create_job, rest, sign_in, unique_id


async def test_create_from_a_type_shows_field_errors_then_creates_a_job_that_fires_and_deletes_it(
    page: Page, dashboard: Dashboard
) -> None:
    job_id = unique_id("made-in-browser")
    await sign_in(page, dashboard)
    await page.get_by_role("button", name="New job").click()
    form = page.locator("#create-form")
    await form.get_by_label("Job type", exact=True).select_option("test_sleep")
    await expect(form).to_contain_text("Sleeps for `seconds`")
    # The fields are drawn from the type's JSON Schema, defaults included.
    await expect(form.get_by_label("Seconds (optional)", exact=True)).to_have_value("0")
    await expect(form.get_by_label("Summary (optional)", exact=True)).to_have_value("slept")
    await form.get_by_label("ID", exact=True).fill(job_id)
    await form.get_by_label("Name", exact=True).fill("Made In Browser")
    await form.get_by_label("Interval", exact=True).fill("2s")
    await form.get_by_label("Seconds (optional)", exact=True).fill("-1")
    await form.get_by_role("button", name="Create job").click()

    seconds_error = form.locator("[data-field='payload.seconds'] .field-error")
    await expect(seconds_error).to_have_text(re.compile("greater than or equal to 0"))
    await expect(form.get_by_label("Seconds (optional)", exact=True)).to_have_attribute("aria-invalid", "true")
    assert (await rest(dashboard, "GET", f"/api/jobs/{job_id}")).status_code == 404

    await form.get_by_label("Interval", exact=True).fill("2 seconds")
    await form.get_by_label("Seconds (optional)", exact=True).fill("0.2")
    await form.get_by_role("button", name="Create job").click()
    await expect(form.locator("[data-field='interval'] .field-error")).to_have_text(re.compile("Invalid interval"))
    await expect(seconds_error).to_be_hidden()

    await form.get_by_label("Interval", exact=True).fill("2s")
    await form.get_by_role("button", name="Create job").click()
    await expect(page.locator("#create-dialog")).not_to_be_visible()
    row = page.locator(f"tr[data-job-id='{job_id}']")
    await expect(row.locator(".schedule-words")).to_have_text("every 2 seconds")
    await expect(row.locator(".last-run .result")).to_have_text("success")  # it fired on its own

    await row.get_by_role("button", name="Details of Made In Browser").click()
    dialog = page.locator("#job-dialog")
    await dialog.get_by_role("button", name="Stop schedule").click()  # a job is deleted once it is not running
    await expect(row.get_by_role("switch")).not_to_be_checked()
    await expect(dialog.locator(".running")).to_have_count(0)
    await dialog.get_by_role("button", name="Delete…").click()
    confirm = page.locator("#confirm-dialog")
    await expect(confirm).to_contain_text("Delete Made In Browser?")
    await expect(confirm.get_by_role("button", name="Cancel")).to_be_focused()
    await confirm.get_by_role("button", name="Cancel").click()
    await expect(row).to_have_count(1)
    assert (await rest(dashboard, "GET", f"/api/jobs/{job_id}")).status_code == 200

    await dialog.get_by_role("button", name="Delete…").click()
    await confirm.get_by_role("button", name="Delete job").click()
    await expect(row).to_have_count(0)
    await expect(page.locator("#notices")).to_contain_text("Made In Browser was deleted.")
    assert (await rest(dashboard, "GET", f"/api/jobs/{job_id}")).status_code == 404


async def test_a_required_payload_field_and_a_duplicate_id_are_reported_next_to_their_fields(
    page: Page, dashboard: Dashboard
) -> None:
    await sign_in(page, dashboard)
    await page.get_by_role("button", name="New job").click()
    form = page.locator("#create-form")
    await form.get_by_label("Job type", exact=True).select_option("send_notifications")
    await form.get_by_label("ID", exact=True).fill("metadata-sync")
    await form.get_by_label("Name", exact=True).fill("Duplicate")
    await form.get_by_label("Cron schedule", exact=True).check()
    await form.get_by_label("Schedule", exact=True).fill("@daily")
    await form.get_by_role("button", name="Create job").click()
    await expect(form.locator("[data-field='payload.template'] .field-error")).to_be_visible()
    await form.get_by_label("Template", exact=True).fill("digest")
    await form.get_by_role("button", name="Create job").click()
    await expect(form.locator("[data-field='id'] .field-error")).to_have_text("Job 'metadata-sync' already exists")


async def test_a_job_deleted_by_another_client_leaves_the_open_page_without_a_reload(
    page: Page, dashboard: Dashboard
) -> None:
    job = await create_job(dashboard, "deleted-elsewhere", name="Deleted Elsewhere")
    await sign_in(page, dashboard)
    row = page.locator(f"tr[data-job-id='{job['id']}']")
    await expect(row).to_have_count(1)
    await row.get_by_role("button", name="Details of Deleted Elsewhere").click()
    await expect(page.locator("#job-dialog")).to_be_visible()
    await expect(page.locator("#connection")).to_have_attribute("data-state", "live")

    assert (await rest(dashboard, "DELETE", f"/api/jobs/{job['id']}")).status_code == 204
    await expect(row).to_have_count(0)
    await expect(page.locator("#job-dialog")).not_to_be_visible()
    await expect(page.locator("#notices")).to_contain_text("Deleted Elsewhere was deleted by another client.")
