"""Table tests for the run lifecycle's pure parts: retry backoff and the plan for fires missed in an outage."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from app.engine.policy import LATEST, NONE, CatchUp, Retry
from app.engine.skips import BY_POLICY, MAX_COUNTED, OUTSIDE_WINDOW, Skip, count_between, plan_missed
from app.platform.schedule import parse_go_duration, validate_schedule


def at(iso: str) -> datetime:
    moment = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    assert moment.tzinfo is not None, iso
    return moment


# --- retry backoff -------------------------------------------------------------------------------------------


def test_backoff_grows_by_the_multiplier_up_to_the_maximum() -> None:
    retry = Retry(max_attempts=6, backoff=10.0, max_backoff=60.0, multiplier=2.0, jitter=0.0)
    assert [retry.delay(n, 0.99) for n in range(1, 6)] == [10.0, 20.0, 40.0, 60.0, 60.0]
    assert [retry.allows_after(n) for n in range(1, 7)] == [True] * 5 + [False]


def test_jitter_only_shortens_the_backoff_by_at_most_its_share() -> None:
    retry = Retry(max_attempts=3, backoff=10.0, max_backoff=10.0, multiplier=1.0, jitter=0.25)
    assert retry.delay(1, 0.0) == 10.0
    assert retry.delay(1, 0.5) == pytest.approx(8.75)
    assert retry.delay(1, 0.999999) == pytest.approx(7.5, abs=1e-4)


def test_a_policy_round_trips_through_its_row() -> None:
    retry = Retry(max_attempts=3, backoff=0.5, max_backoff=30.0, multiplier=1.5, jitter=0.1)
    assert Retry.from_row(retry.to_row()) == retry
    assert Retry.from_row(None) is None


# --- fires missed in an outage -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "schedule,tz,first,now,window,expected",
    [
        ("*/5 * * * *", None, "2026-01-01T09:00Z", "2026-01-01T10:07Z", "5m", "2026-01-01T10:05Z"),
        ("*/5 * * * *", None, "2026-01-01T10:05Z", "2026-01-01T10:07Z", "5m", "2026-01-01T10:05Z"),
        ("*/5 * * * *", None, "2026-01-01T10:10Z", "2026-01-01T10:07Z", "5m", None),  # nothing came due
        ("*/5 * * * *", None, "2026-01-01T07:05Z", "2026-01-01T10:07Z", "5m", "2026-01-01T10:05Z"),  # no burst
        ("*/5 * * * *", None, "2026-01-01T10:05Z", "2026-01-01T10:05Z", "5m", "2026-01-01T10:05Z"),  # now included
        ("*/5 * * * *", None, "2026-01-01T10:00Z", "2026-01-01T10:09Z", "4m", None),  # now - window excluded
        ("*/5 * * * *", None, "2026-01-01T10:00Z", "2026-01-01T10:09Z", "4m1s", "2026-01-01T10:05Z"),
        ("*/5 * * * *", None, "2026-01-01T10:05Z", "2026-01-01T10:05Z", "0s", None),  # no window, no catch-up
        ("@daily", None, "2025-12-31T00:00Z", "2026-01-01T00:10Z", "15m", "2026-01-01T00:00Z"),
        ("@daily", None, "2025-12-31T00:00Z", "2026-01-01T00:10Z", "5m", None),
        ("@every 90s", None, "2026-01-01T00:00Z", "2026-01-01T00:00:10Z", "1m", "2026-01-01T00:00Z"),
        ("@every 90s", None, "2026-01-01T00:01:30Z", "2026-01-01T00:01:40Z", "1m", "2026-01-01T00:01:30Z"),
        ("0 9 * * *", "Europe/Berlin", "2026-05-04T07:00Z", "2026-05-04T07:30Z", "1h", "2026-05-04T07:00Z"),
        ("0 9 * * *", "Europe/Berlin", "2026-05-04T07:00Z", "2026-05-04T08:30Z", "1h", None),
        # 01:40 EST on fall-back day: 01:30 fired at 05:30Z (EDT) only, and that is outside a 1h window
        ("30 1 * * *", "America/New_York", "2026-11-01T05:30Z", "2026-11-01T06:40Z", "1h", None),
        ("30 1 * * *", "America/New_York", "2026-11-01T05:30Z", "2026-11-01T06:40Z", "2h", "2026-11-01T05:30Z"),
        # the skipped 02:30 CET fired at 03:00 CEST (01:00Z)
        ("30 2 * * *", "Europe/Berlin", "2026-03-29T01:00Z", "2026-03-29T01:10Z", "15m", "2026-03-29T01:00Z"),
    ],
)
def test_latest_runs_the_latest_fire_inside_the_window(
    schedule: str, tz: str | None, first: str, now: str, window: str, expected: str | None
) -> None:
    parsed = validate_schedule(schedule, tz)
    seconds = parse_go_duration(window).total_seconds() if window != "0s" else 0.0
    missed = plan_missed("j", parsed, at(first), at(now), CatchUp(window=seconds, policy=LATEST))
    assert missed.run_at == (at(expected) if expected else None)


def test_every_missed_fire_that_does_not_run_is_recorded_as_a_range_with_its_reason() -> None:
    every_minute = validate_schedule("* * * * *")
    first, now = at("2026-01-01T10:00Z"), at("2026-01-01T10:30:30Z")  # 31 fires came due: 10:00 .. 10:30
    latest = plan_missed("j", every_minute, first, now, CatchUp(window=600.0, policy=LATEST))
    assert latest.run_at == at("2026-01-01T10:30Z")
    assert latest.skips == [
        # due before 10:20:30 (now - 10 min): outside the window
        Skip("j", first, OUTSIDE_WINDOW, at("2026-01-01T10:20Z"), 21),
        # inside it, but `latest` runs only 10:30
        Skip("j", at("2026-01-01T10:21Z"), BY_POLICY, at("2026-01-01T10:29Z"), 9),
    ]
    none = plan_missed("j", every_minute, first, now, CatchUp(window=600.0, policy=NONE))
    assert none.run_at is None
    assert none.skips == [
        Skip("j", first, OUTSIDE_WINDOW, at("2026-01-01T10:20Z"), 21),
        Skip("j", at("2026-01-01T10:21Z"), BY_POLICY, at("2026-01-01T10:30Z"), 10),
    ]
    assert sum(s.count for s in none.skips) == 31  # every instant accounted for, none twice


def test_a_single_missed_fire_is_a_range_of_one() -> None:
    hourly = validate_schedule("0 * * * *")
    missed = plan_missed("j", hourly, at("2026-01-01T10:00Z"), at("2026-01-01T10:30Z"), CatchUp(300.0, LATEST))
    assert missed.run_at is None
    assert missed.skips == [Skip("j", at("2026-01-01T10:00Z"), OUTSIDE_WINDOW)]
    assert missed.skips[0].last == at("2026-01-01T10:00Z")


def test_counts_are_exact_for_intervals_and_capped_for_cron() -> None:
    every_second = validate_schedule("@every 1s")
    week = at("2026-01-08T00:00Z")
    assert count_between(every_second, at("2026-01-01T00:00Z"), week) == 7 * 86_400 + 1
    cron = validate_schedule("* * * * *")
    assert count_between(cron, at("2026-01-01T00:00Z"), at("2026-01-01T01:00Z")) == 61
    assert count_between(cron, at("2026-01-01T00:00Z"), at("2027-01-01T00:00Z")) == MAX_COUNTED
    assert count_between(cron, week, week + timedelta(0)) == 1
