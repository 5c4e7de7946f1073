"""Schedules in words, keyboard use, a narrow window, and the page's own security rules, in the browser."""

from __future__ import annotations

from playwright.async_api import Browser, Page, expect

from tests.browser.helpers import Dashboard, create_job, sign_in

SCHEDULES = [
    ("0 */6 * * *", "every 6 hours"),
    ("*/15 * * * *", "every 15 minutes"),
    ("* * * * *", "every minute"),
    ("0 * * * *", "every hour"),
    ("5 * * * *", "every hour at minute 5"),
    ("30 0 * * *", "every day at 00:30"),
    ("0 9 * * 1-5", "every weekday (Monday to Friday) at 09:00"),
    ("0 0 * * 0", "every Sunday at 00:00"),
    ("0 8 * * 1,3", "every Monday and Wednesday at 08:00"),
    ("0 3 1 * *", "on day 1 of every month at 03:00"),
    ("15 4 25 12 *", "every year on 25 December at 04:15"),
    ("@daily", "every day at 00:00"),
    ("@hourly", "every hour"),
    ("@every 1m", "every minute"),
    ("@every 5m", "every 5 minutes"),
    ("@every 24h", "every 24 hours"),
    ("@every 1h30m", "every 90 minutes"),
    ("@every 90s", "every 90 seconds"),
    ("@every 1s", "every second"),
    # Not simple to say: the raw text, unchanged.
    ("@every 1.5s", "@every 1.5s"),
    ("0 9-17 * * *", "0 9-17 * * *"),
    ("0 0 L * *", "0 0 L * *"),
    ("*/0 * * * *", "*/0 * * * *"),
    ("0 0 * * 1#2", "0 0 * * 1#2"),
]


async def test_schedules_are_said_in_words_or_left_as_written(page: Page, dashboard: Dashboard) -> None:
    await page.goto(dashboard.page_url)
    main = await page.locator("script[type=module]").get_attribute("src")
    assert main is not None
    described = await page.evaluate(
        "async ([url, inputs]) => { const m = await import(url); return inputs.map(m.describeSchedule); }",
        [main.replace("main.js", "schedule.js"), [s for s, _ in SCHEDULES]],
    )
    assert list(zip([s for s, _ in SCHEDULES], described, strict=True)) == SCHEDULES


async def test_times_and_durations_are_said_briefly(page: Page, dashboard: Dashboard) -> None:
    await page.goto(dashboard.page_url)
    main = await page.locator("script[type=module]").get_attribute("src")
    assert main is not None
    said = await page.evaluate(
        """async (url) => {
            const f = await import(url);
            const now = Date.parse("2026-01-15T06:00:00.000Z");
            return [
                f.relative("2026-01-15T06:00:45.000Z", now), f.relative("2026-01-15T09:12:10.000Z", now),
                f.relative("2026-01-13T05:00:00.000Z", now), f.relative("2026-01-15T06:00:00.400Z", now),
                f.relative(null, now), f.duration(0), f.duration(840), f.duration(1450), f.duration(754000),
            ];
        }""",
        main.replace("main.js", "format.js"),
    )
    assert said == ["in 45 s", "in 3 h 12 min", "2 d 1 h ago", "now", "", "0 ms", "840 ms", "1.4 s", "12 min 34 s"]


async def test_the_page_can_be_used_from_the_keyboard(page: Page, dashboard: Dashboard) -> None:
    job = await create_job(dashboard, "keyboard", interval="1h", enabled=True)
    await page.goto(dashboard.page_url)
    await expect(page.get_by_label("Access token")).to_be_focused()
    await page.keyboard.type(dashboard.token())
    await page.keyboard.press("Tab")
    await expect(page.get_by_role("button", name="Sign in")).to_be_focused()
    await page.keyboard.press("Enter")
    await expect(page.locator("#connection")).to_have_text("Live")
    row = page.locator(f"tr[data-job-id='{job['id']}']")
    switch = row.get_by_role("switch", name=f"{job['name']} enabled")
    await switch.focus()
    await page.keyboard.press("Space")
    await expect(row.locator(".next-run")).to_have_text("not scheduled")
    await expect(switch).to_be_focused()  # the row was updated in place, the focus stayed
    await page.keyboard.press("Tab")
    await expect(row.get_by_role("button", name=f"Run {job['name']} now")).to_be_focused()
    await page.keyboard.press("Tab")
    details = row.get_by_role("button", name=f"Details of {job['name']}")
    await expect(details).to_be_focused()
    await page.keyboard.press("Enter")
    await expect(page.locator("#job-dialog")).to_be_visible()
    await page.keyboard.press("Escape")
    await expect(page.locator("#job-dialog")).not_to_be_visible()
    await expect(details).to_be_focused()


async def test_a_narrow_window_shows_each_job_as_a_card_without_sideways_scrolling(
    page: Page, dashboard: Dashboard
) -> None:
    await page.set_viewport_size({"width": 360, "height": 740})
    await sign_in(page, dashboard)
    row = page.locator("tr[data-job-id='metadata-sync']")
    await expect(row.locator(".schedule-words")).to_be_visible()
    assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    label = await row.locator("td.next-run").evaluate("td => getComputedStyle(td, '::before').content")
    assert label == '"Next run"'
    box = await row.get_by_role("button", name="Run Metadata Sync now").bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 360


async def test_inline_script_and_markup_sinks_are_refused_by_the_page_policy(
    browser: Browser, dashboard: Dashboard
) -> None:
    # Its own tab: the violations provoked here are what the `page` fixture would count as errors.
    context = await browser.new_context()
    try:
        tab = await context.new_page()
        violations: list[str] = []
        tab.on("console", lambda msg: violations.append(msg.text) if msg.type == "error" else None)
        await tab.goto(dashboard.page_url)
        outcome = await tab.evaluate(
            """() => {
                const attempt = (fn) => { try { fn(); return "allowed"; } catch (e) { return e.name; } };
                const script = document.createElement("script");
                return {
                    innerHTML: attempt(() => { document.body.innerHTML += "<b>x</b>"; }),
                    scriptText: attempt(() => { script.textContent = "window.inlineRan = true"; }),
                };
            }"""
        )
        assert outcome == {"innerHTML": "TypeError", "scriptText": "TypeError"}
        assert any("TrustedHTML" in v for v in violations), violations
    finally:
        await context.close()
