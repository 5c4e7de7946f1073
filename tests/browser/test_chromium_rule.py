"""Without Chromium the browser tests skip on a developer machine, and fail under CI."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.browser import conftest


@pytest.fixture
def no_chromium(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    monkeypatch.setattr(conftest, "CHROMIUM", tmp_path / "chromium")
    return monkeypatch


def test_missing_chromium_skips_with_the_reason_outside_ci(no_chromium: pytest.MonkeyPatch) -> None:
    no_chromium.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="is not installed"):
        conftest.require_chromium()


@pytest.mark.parametrize("value", ["true", "1", "yes"])
def test_missing_chromium_fails_under_ci(no_chromium: pytest.MonkeyPatch, value: str) -> None:
    no_chromium.setenv("CI", value)
    with pytest.raises(pytest.fail.Exception, match="must run under CI"):
        conftest.require_chromium()


def test_ci_false_counts_as_no_ci(no_chromium: pytest.MonkeyPatch) -> None:
    no_chromium.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception):
        conftest.require_chromium()
