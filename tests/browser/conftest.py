"""A real jobs-gateway process (uvicorn, embedded arq worker, its own redis-server and SQLite file) and
Debian's Chromium driven headless by Playwright. Nothing is downloaded: the system browser is launched by path.

Without /usr/bin/chromium the browser tests are skipped on a developer machine and fail under CI.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page, async_playwright, expect

from tests.browser.helpers import Dashboard
from tests.conftest import make_settings
from tests.support.processes import ROOT, ApiProcess
from tests.support.servers import RedisServer, free_port

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "tests" / "artifacts"
LAUNCH_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# A loaded 2-core machine: generous waits, which only cost time when something is wrong.
expect.set_options(timeout=15_000)
os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")

_reports = pytest.StashKey[dict[str, pytest.TestReport]]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[pytest.TestReport]:
    report: pytest.TestReport = yield
    item.stash.setdefault(_reports, {})[report.when] = report
    return report


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require_chromium() -> None:
    if CHROMIUM.exists():
        return
    reason = f"{CHROMIUM} is not installed (Debian's `chromium` package; `make system-deps` installs it as root)"
    if in_ci():
        pytest.fail(f"browser tests must run under CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="package")
def dashboard(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[Dashboard]:
    """One service for the whole folder: each test works on jobs of its own, so they do not interfere."""
    workdir = tmp_path_factory.mktemp("dashboard")
    database = workdir / "jobs.sqlite3"
    shutil.copyfile(sqlite_template, database)
    with RedisServer() as redis:
        settings = make_settings(database_url=f"sqlite://{database}", redis_url=redis.url)
        api = ApiProcess(settings, workdir, free_port())
        with api:
            yield Dashboard(api, settings)


@pytest_asyncio.fixture
async def browser() -> AsyncIterator[Browser]:
    require_chromium()
    async with async_playwright() as pw:
        launched = await pw.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
def expected_console_errors() -> list[str]:
    """Texts of browser console errors a test provokes on purpose (it appends to this list)."""
    return ["WebSocket connection to"]  # what Chromium logs for a refused token or a server going away


@pytest_asyncio.fixture
async def page(
    browser: Browser, request: pytest.FixtureRequest, expected_console_errors: list[str]
) -> AsyncIterator[Page]:
    """A fresh tab; script errors and CSP violations fail the test, and a failed test leaves a screenshot."""
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    tab = await context.new_page()
    problems: list[str] = []
    tab.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    tab.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}") if msg.type == "error" else None)
    try:
        yield tab
        reports = request.node.stash.get(_reports, {})
        if "call" in reports and reports["call"].passed:
            assert [p for p in problems if not any(e in p for e in expected_console_errors)] == []
    finally:
        reports = request.node.stash.get(_reports, {})
        screenshot = ARTIFACTS / (re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name) + ".png")
        if any(r.failed for r in reports.values()):
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            await tab.screenshot(path=str(screenshot), full_page=True)
        else:
            screenshot.unlink(missing_ok=True)  # only failures of the latest run are left to look at
        await context.close()
