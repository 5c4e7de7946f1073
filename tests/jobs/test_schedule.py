"""Table tests for app.platform.schedule; every instant is injected, none is read from a clock."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from app.platform.schedule import (
    FORMS,
    MIN_INTERVAL,
    Schedule,
    ScheduleError,
    fire_times_between,
    format_go_duration,
    interval_to_schedule,
    parse_every,
    parse_go_duration,
    validate_schedule,
)


def at(iso: str) -> datetime:
    moment = datetime.fromisoformat(iso)
    assert moment.tzinfo is not None, iso
    return moment


def isos(fires: list[datetime]) -> list[str]:
    assert all(fire.tzinfo is UTC for fire in fires)
    return [fire.strftime("%Y-%m-%dT%H:%M:%S.%fZ").replace(".000000Z", "Z") for fire in fires]


# --- Go durations ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,expected",
    [
        ("90s", timedelta(seconds=90)),
        ("5m", timedelta(minutes=5)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("24h", timedelta(days=1)),
        ("168h", timedelta(weeks=1)),
        ("1.5h", timedelta(hours=1, minutes=30)),
        ("300ms", timedelta(milliseconds=300)),
        ("2h45m30.5s", timedelta(hours=2, minutes=45, seconds=30.5)),
        ("1m90s", timedelta(seconds=150)),
        ("30s1m", timedelta(seconds=90)),
        (".5s", timedelta(milliseconds=500)),
        ("1.s", timedelta(seconds=1)),
        ("1us", timedelta(microseconds=1)),
        ("1µs", timedelta(microseconds=1)),  # micro sign
        ("1μs", timedelta(microseconds=1)),  # Greek mu
        ("1500ns", timedelta(microseconds=1)),  # below timedelta's resolution: truncated
        ("0.1s", timedelta(milliseconds=100)),  # exact decimal arithmetic, no float
        ("0.000001s", timedelta(microseconds=1)),
        ("8760h", timedelta(days=365)),
    ],
)
def test_parse_go_duration(text: str, expected: timedelta) -> None:
    assert parse_go_duration(text) == expected


@pytest.mark.parametrize(
    "text,message",
    [
        ("", "is not a Go duration"),
        ("5", "is not a Go duration"),
        ("5x", "'5x' is not a Go duration; use forms like 90s, 5m, 1h30m, 24h"),
        ("5M", "is not a Go duration"),
        ("1d", "is not a Go duration"),
        ("h", "is not a Go duration"),
        (".s", "is not a Go duration"),
        ("1h 30m", "is not a Go duration"),
        (" 5m", "is not a Go duration"),
        ("1e3s", "is not a Go duration"),
        ("1,5h", "is not a Go duration"),
        ("١s", "is not a Go duration"),  # non-ASCII digit
        ("-5m", "has a sign"),
        ("+5m", "has a sign"),
        ("0", "is not a Go duration"),
        ("0s", "is zero"),
        ("0.0h", "is zero"),
        ("500ns", "is zero"),
        ("99999999999999999999h", "too long"),
    ],
)
def test_parse_go_duration_rejects(text: str, message: str) -> None:
    with pytest.raises(ScheduleError, match="use forms like 90s, 5m, 1h30m, 24h") as info:
        parse_go_duration(text)
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "duration,text",
    [
        (timedelta(seconds=90), "1m30s"),
        (timedelta(minutes=5), "5m"),
        (timedelta(hours=1, minutes=30), "1h30m"),
        (timedelta(days=1), "24h"),
        (timedelta(hours=1, seconds=30), "1h30s"),
        (timedelta(seconds=1.5), "1.5s"),
        (timedelta(milliseconds=300), "300ms"),
        (timedelta(microseconds=1500), "1.5ms"),
        (timedelta(microseconds=7), "7µs"),
        (timedelta(hours=2, microseconds=1), "2h0.000001s"),
        (timedelta(0), "0s"),
        (timedelta(minutes=-5), "-5m"),
    ],
)
def test_format_go_duration(duration: timedelta, text: str) -> None:
    assert format_go_duration(duration) == text
    if duration > timedelta(0):
        assert parse_go_duration(text) == duration


@pytest.mark.parametrize("text", ["1s", "5m", "1h30m", "1.5s", "168h"])
def test_parse_every_accepts(text: str) -> None:
    assert parse_every(text) >= MIN_INTERVAL


@pytest.mark.parametrize("text", ["999ms", "500ms", "1us", "0.5s"])
def test_parse_every_minimum(text: str) -> None:
    with pytest.raises(ScheduleError, match="shorter than the minimum interval of 1s"):
        parse_every(text)


@pytest.mark.parametrize(
    "interval,schedule",
    [("24h", "@every 24h"), (" 90s ", "@every 90s"), ("1h30m", "@every 1h30m"), ("1.5h", "@every 1.5h")],
)
def test_interval_to_schedule(interval: str, schedule: str) -> None:
    assert interval_to_schedule(interval) == schedule
    assert validate_schedule(schedule).every == parse_go_duration(interval.strip())


@pytest.mark.parametrize("interval", ["0s", "500ms", "1 day", "", "-1h"])
def test_interval_to_schedule_rejects(interval: str) -> None:
    with pytest.raises(ScheduleError):
        interval_to_schedule(interval)


# --- validation ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "schedule,tz,expression,every,zone",
    [
        ("0 */6 * * *", None, "0 */6 * * *", None, "UTC"),
        ("  30   2 *\t* *  ", None, "30 2 * * *", None, "UTC"),
        ("0 9 * * MON-FRI", "Europe/Berlin", "0 9 * * MON-FRI", None, "Europe/Berlin"),
        ("0 0 29 2 *", None, "0 0 29 2 *", None, "UTC"),
        ("0 0 L * *", None, "0 0 L * *", None, "UTC"),
        ("0 0 31 2 1", None, "0 0 31 2 1", None, "UTC"),  # day-of-month OR day-of-week: Mondays in February
        ("0 0 * MAR,APR FRI", None, "0 0 * MAR,APR FRI", None, "UTC"),  # names with H and R are not hashes
        ("@hourly", None, "@hourly", None, "UTC"),
        ("@daily", "America/New_York", "@daily", None, "America/New_York"),
        ("@weekly", None, "@weekly", None, "UTC"),
        ("@monthly", None, "@monthly", None, "UTC"),
        ("@yearly", None, "@yearly", None, "UTC"),
        ("@annually", None, "@annually", None, "UTC"),
        ("@midnight", None, "@midnight", None, "UTC"),
        (" @Daily ", None, "@daily", None, "UTC"),
        ("@every 5m", None, "@every 5m", timedelta(minutes=5), "UTC"),
        ("@every   1h30m ", "Asia/Kolkata", "@every 1h30m", timedelta(hours=1, minutes=30), "Asia/Kolkata"),
        ("@every 1s", None, "@every 1s", timedelta(seconds=1), "UTC"),
        ("@every 24h", None, "@every 24h", timedelta(days=1), "UTC"),
    ],
)
def test_validate_schedule(schedule: str, tz: str | None, expression: str, every: timedelta | None, zone: str) -> None:
    parsed = validate_schedule(schedule, tz)
    assert parsed == Schedule(expression, ZoneInfo(zone), every)
    assert validate_schedule(parsed.expression, tz) == parsed


@pytest.mark.parametrize(
    "schedule,tz,message",
    [
        ("", None, "the schedule is empty"),
        ("   ", None, "the schedule is empty"),
        ("0 0 31 2 *", None, "is not a valid cron expression"),
        ("0 0 30 2 *", None, "is not a valid cron expression"),
        ("* * * * * *", None, "has 6 fields (seconds and year fields are not supported)"),
        ("0 0 12 * * ? 2030", None, "has 7 fields (seconds and year fields are not supported)"),
        ("0 0 * *", None, "has 4 fields"),
        ("60 * * * *", None, "is not a valid cron expression"),
        ("*/0 * * * *", None, "is not a valid cron expression"),
        ("0 0 * * 8", None, "is not a valid cron expression"),
        ("x * * * *", None, "is not a valid cron expression"),
        ("R * * * *", None, "hashed or random fields"),
        ("H * * * *", None, "hashed or random fields"),
        ("0 H(0-5) * * *", None, "hashed or random fields"),
        ("@reboot", None, "'@reboot' is not a supported schedule"),
        ("@fortnightly", None, "is not a supported schedule"),
        ("@daily 5", None, "is not a supported schedule"),
        ("@every", None, "@every takes one Go duration"),
        ("@every 1h 30m", None, "@every takes one Go duration"),
        ("@every 5x", None, "'5x' is not a Go duration; use forms like 90s, 5m, 1h30m, 24h"),
        ("@every -5m", None, "has a sign"),
        ("@every 0s", None, "is zero"),
        ("@every 500ms", None, "shorter than the minimum interval of 1s"),
        ("@daily", "Mars/Olympus_Mons", "unknown IANA time zone 'Mars/Olympus_Mons'"),
        ("@daily", "utc", "unknown IANA time zone"),
        ("@daily", "", "unknown IANA time zone"),
        ("@daily", "../etc/passwd", "unknown IANA time zone"),
    ],
)
def test_validate_schedule_rejects(schedule: str, tz: str | None, message: str) -> None:
    with pytest.raises(ScheduleError) as info:
        validate_schedule(schedule, tz)
    text = str(info.value)
    assert message in text
    assert any(hint in text for hint in (FORMS, "use forms like 90s, 5m, 1h30m, 24h", "use a name such as UTC"))


def test_forms_name_every_accepted_form() -> None:
    for form in ("5-field cron", "@hourly", "@daily", "@weekly", "@monthly", "@yearly", "@every 5m"):
        assert form in FORMS


def test_naive_instants_rejected() -> None:
    for schedule in (validate_schedule("@daily"), validate_schedule("@every 5m")):
        with pytest.raises(ValueError, match="timezone-aware"):
            schedule.next_after(datetime(2026, 1, 1))
        with pytest.raises(ValueError, match="timezone-aware"):
            schedule.last_at_or_before(datetime(2026, 1, 1))


# --- @every ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "schedule,tz,after,expected",
    [
        ("@every 5m", None, "2026-01-01T10:02:30Z", "2026-01-01T10:05:00Z"),
        ("@every 5m", None, "2026-01-01T10:05:00Z", "2026-01-01T10:10:00Z"),  # strictly after
        ("@every 5m", None, "2026-01-01T10:04:59.999999Z", "2026-01-01T10:05:00Z"),
        ("@every 5m", None, "2026-01-01T11:02:30+01:00", "2026-01-01T10:05:00Z"),  # any offset in, UTC out
        ("@every 24h", "Europe/Berlin", "2026-03-29T12:00:00+02:00", "2026-03-30T00:00:00Z"),  # tz plays no part
        ("@every 1h30m", None, "2026-01-01T00:00:00Z", "2026-01-01T01:30:00Z"),  # 1767225600 = 327264 * 5400
        ("@every 7m", None, "2026-01-01T00:02:00Z", "2026-01-01T00:07:00Z"),  # 1767225600 % 420 == 0
        ("@every 1.5s", None, "2026-01-01T00:00:00.2Z", "2026-01-01T00:00:01.5Z"),
        ("@every 1s", None, "2026-01-01T00:00:00.5Z", "2026-01-01T00:00:01Z"),
        ("@every 168h", None, "2026-01-01T00:00:00Z", "2026-01-08T00:00:00Z"),  # Thursdays, as was the epoch
        ("@every 5m", None, "1969-12-31T23:58:00Z", "1970-01-01T00:00:00Z"),
    ],
)
def test_every_next_after(schedule: str, tz: str | None, after: str, expected: str) -> None:
    fire = validate_schedule(schedule, tz).next_after(at(after))
    assert fire == at(expected)
    assert fire.tzinfo is UTC


@pytest.mark.parametrize(
    "schedule", ["@every 1s", "@every 7m", "@every 1h30m", "@every 1.5s", "@every 25h", "@every 13s"]
)
@pytest.mark.parametrize("first", ["2026-01-01T00:00:00Z", "2026-03-29T01:59:59.999999+02:00"])
@pytest.mark.parametrize("offset", [0.4, 17.3, 42.0])
def test_every_is_anchored_to_the_epoch(schedule: str, first: str, offset: float) -> None:
    """Processes starting at different moments, in different zones, compute the same fires."""
    every = parse_go_duration(schedule.split()[1])
    start = at(first)
    fires = fire_times_between(validate_schedule(schedule), start, start + 60 * every)
    assert len(fires) == 60
    assert all((fire - datetime(1970, 1, 1, tzinfo=UTC)) % every == timedelta(0) for fire in fires)
    assert all(b - a == every for a, b in itertools.pairwise(fires))
    late = start + offset * every
    other = fire_times_between(validate_schedule(schedule, "Pacific/Chatham"), late, late + 10 * every)
    assert other == [fire for fire in fires if late < fire <= late + 10 * every]


# --- cron, macros, time zones ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "schedule,after,expected",
    [
        ("0 */6 * * *", "2026-05-04T05:59:59Z", "2026-05-04T06:00:00Z"),
        ("0 */6 * * *", "2026-05-04T06:00:00Z", "2026-05-04T12:00:00Z"),
        ("0 */6 * * *", "2026-05-04T06:00:00.000001Z", "2026-05-04T12:00:00Z"),
        ("30 0 * * *", "2026-05-04T00:30:00Z", "2026-05-05T00:30:00Z"),
        ("0 0 * * 0", "2026-05-04T00:00:00Z", "2026-05-10T00:00:00Z"),  # 2026-05-10 is a Sunday
        ("0 9 * * MON-FRI", "2026-05-08T09:00:00Z", "2026-05-11T09:00:00Z"),
        ("*/15 * * * *", "2026-12-31T23:59:00Z", "2027-01-01T00:00:00Z"),
        ("0 0 29 2 *", "2026-03-01T00:00:00Z", "2028-02-29T00:00:00Z"),
        ("0 0 L * *", "2026-02-01T00:00:00Z", "2026-02-28T00:00:00Z"),
        ("0 12 * * *", "2026-05-04T14:00:00+02:00", "2026-05-05T12:00:00Z"),  # `after` in any offset
    ],
)
def test_cron_next_after_utc(schedule: str, after: str, expected: str) -> None:
    fire = validate_schedule(schedule).next_after(at(after))
    assert fire == at(expected)
    assert fire.tzinfo is UTC


@pytest.mark.parametrize(
    "macro,after,expected",
    [
        ("@hourly", "2026-05-04T10:15:00Z", "2026-05-04T11:00:00Z"),
        ("@daily", "2026-05-04T10:15:00Z", "2026-05-05T00:00:00Z"),
        ("@midnight", "2026-05-04T10:15:00Z", "2026-05-05T00:00:00Z"),
        ("@weekly", "2026-05-04T10:15:00Z", "2026-05-10T00:00:00Z"),
        ("@monthly", "2026-05-04T10:15:00Z", "2026-06-01T00:00:00Z"),
        ("@yearly", "2026-05-04T10:15:00Z", "2027-01-01T00:00:00Z"),
        ("@annually", "2026-05-04T10:15:00Z", "2027-01-01T00:00:00Z"),
    ],
)
def test_macros(macro: str, after: str, expected: str) -> None:
    assert validate_schedule(macro).next_after(at(after)) == at(expected)


@pytest.mark.parametrize(
    "schedule,tz,after,expected",
    [
        ("0 9 * * *", None, "2026-05-04T00:00:00Z", "2026-05-04T09:00:00Z"),
        ("0 9 * * *", "UTC", "2026-05-04T00:00:00Z", "2026-05-04T09:00:00Z"),
        ("0 9 * * *", "Europe/Berlin", "2026-05-04T00:00:00Z", "2026-05-04T07:00:00Z"),
        ("0 9 * * *", "Europe/Berlin", "2026-01-04T00:00:00Z", "2026-01-04T08:00:00Z"),
        ("0 9 * * *", "America/New_York", "2026-05-04T00:00:00Z", "2026-05-04T13:00:00Z"),
        ("0 9 * * *", "Asia/Kolkata", "2026-05-04T00:00:00Z", "2026-05-04T03:30:00Z"),
        ("0 9 * * *", "Asia/Kolkata", "2026-05-04T03:30:00Z", "2026-05-05T03:30:00Z"),
        ("@daily", "Europe/Berlin", "2026-05-04T12:00:00Z", "2026-05-04T22:00:00Z"),
        ("@daily", "Pacific/Kiritimati", "2026-05-04T12:00:00Z", "2026-05-05T10:00:00Z"),
        ("0 0 * * 1", "Australia/Sydney", "2026-05-04T00:00:00Z", "2026-05-10T14:00:00Z"),  # Monday 00:00 AEST
        ("@monthly", "America/New_York", "2026-05-04T00:00:00Z", "2026-06-01T04:00:00Z"),
    ],
)
def test_per_job_time_zone(schedule: str, tz: str | None, after: str, expected: str) -> None:
    assert validate_schedule(schedule, tz).next_after(at(after)) == at(expected)


# --- DST ---------------------------------------------------------------------------------------------
# Europe/Berlin: 2026-03-29 02:00 CET -> 03:00 CEST at 01:00Z; 2026-10-25 03:00 CEST -> 02:00 CET at 01:00Z.
# America/New_York: 2026-03-08 02:00 EST -> 03:00 EDT at 07:00Z; 2026-11-01 02:00 EDT -> 01:00 EST at 06:00Z.


@pytest.mark.parametrize(
    "schedule,tz,start,end,expected",
    [
        # daily at a skipped wall time: once, when the clock jumps
        ("30 2 * * *", "Europe/Berlin", "2026-03-27T00:00Z", "2026-03-31T00:00Z",
         ["2026-03-27T01:30Z", "2026-03-28T01:30Z", "2026-03-29T01:00Z", "2026-03-30T00:30Z"]),
        ("30 2 * * *", "America/New_York", "2026-03-06T00:00Z", "2026-03-10T00:00Z",
         ["2026-03-06T07:30Z", "2026-03-07T07:30Z", "2026-03-08T07:00Z", "2026-03-09T06:30Z"]),
        ("30 1 * * *", "America/New_York", "2026-03-06T00:00Z", "2026-03-10T00:00Z",
         ["2026-03-06T06:30Z", "2026-03-07T06:30Z", "2026-03-08T06:30Z", "2026-03-09T05:30Z"]),
        # daily at a repeated wall time: once, at the first occurrence
        ("30 2 * * *", "Europe/Berlin", "2026-10-23T00:00Z", "2026-10-27T00:00Z",
         ["2026-10-23T00:30Z", "2026-10-24T00:30Z", "2026-10-25T00:30Z", "2026-10-26T01:30Z"]),
        ("30 1 * * *", "America/New_York", "2026-10-30T00:00Z", "2026-11-03T00:00Z",
         ["2026-10-30T05:30Z", "2026-10-31T05:30Z", "2026-11-01T05:30Z", "2026-11-02T06:30Z"]),
        ("30 2 * * *", "America/New_York", "2026-10-30T00:00Z", "2026-11-03T00:00Z",
         ["2026-10-30T06:30Z", "2026-10-31T06:30Z", "2026-11-01T07:30Z", "2026-11-02T07:30Z"]),
        ("@daily", "America/New_York", "2026-10-31T00:00Z", "2026-11-03T00:00Z",
         ["2026-10-31T04:00Z", "2026-11-01T04:00Z", "2026-11-02T05:00Z"]),
        # hourly across spring forward: 02:00 does not exist, 03:00 fires once
        ("0 * * * *", "Europe/Berlin", "2026-03-28T22:00Z", "2026-03-29T03:00Z",
         ["2026-03-28T23:00Z", "2026-03-29T00:00Z", "2026-03-29T01:00Z", "2026-03-29T02:00Z", "2026-03-29T03:00Z"]),
        ("0 * * * *", "America/New_York", "2026-03-08T04:00Z", "2026-03-08T09:00Z",
         ["2026-03-08T05:00Z", "2026-03-08T06:00Z", "2026-03-08T07:00Z", "2026-03-08T08:00Z", "2026-03-08T09:00Z"]),
        ("30 * * * *", "Europe/Berlin", "2026-03-28T22:00Z", "2026-03-29T03:00Z",
         ["2026-03-28T22:30Z", "2026-03-28T23:30Z", "2026-03-29T00:30Z", "2026-03-29T01:00Z", "2026-03-29T01:30Z",
          "2026-03-29T02:30Z"]),
        ("*/30 * * * *", "Europe/Berlin", "2026-03-28T23:00Z", "2026-03-29T02:00Z",
         ["2026-03-28T23:30Z", "2026-03-29T00:00Z", "2026-03-29T00:30Z", "2026-03-29T01:00Z", "2026-03-29T01:30Z",
          "2026-03-29T02:00Z"]),
        ("*/30 * * * *", "America/New_York", "2026-03-08T05:00Z", "2026-03-08T08:00Z",
         ["2026-03-08T05:30Z", "2026-03-08T06:00Z", "2026-03-08T06:30Z", "2026-03-08T07:00Z", "2026-03-08T07:30Z",
          "2026-03-08T08:00Z"]),
        # hourly across fall back: the repeated hour's wall times already fired, so it stays silent
        ("0 * * * *", "Europe/Berlin", "2026-10-24T22:00Z", "2026-10-25T03:00Z",
         ["2026-10-24T23:00Z", "2026-10-25T00:00Z", "2026-10-25T02:00Z", "2026-10-25T03:00Z"]),
        ("0 * * * *", "America/New_York", "2026-11-01T03:00Z", "2026-11-01T09:00Z",
         ["2026-11-01T04:00Z", "2026-11-01T05:00Z", "2026-11-01T07:00Z", "2026-11-01T08:00Z", "2026-11-01T09:00Z"]),
        ("*/30 * * * *", "Europe/Berlin", "2026-10-24T23:00Z", "2026-10-25T03:00Z",
         ["2026-10-24T23:30Z", "2026-10-25T00:00Z", "2026-10-25T00:30Z", "2026-10-25T02:00Z", "2026-10-25T02:30Z",
          "2026-10-25T03:00Z"]),
        ("*/30 * * * *", "America/New_York", "2026-11-01T04:00Z", "2026-11-01T08:00Z",
         ["2026-11-01T04:30Z", "2026-11-01T05:00Z", "2026-11-01T05:30Z", "2026-11-01T07:00Z", "2026-11-01T07:30Z",
          "2026-11-01T08:00Z"]),
        # UTC and @every know no DST
        ("0 * * * *", None, "2026-03-29T00:00Z", "2026-03-29T03:00Z",
         ["2026-03-29T01:00Z", "2026-03-29T02:00Z", "2026-03-29T03:00Z"]),
        ("@every 1h", "Europe/Berlin", "2026-10-25T00:00Z", "2026-10-25T03:00Z",
         ["2026-10-25T01:00Z", "2026-10-25T02:00Z", "2026-10-25T03:00Z"]),
    ],
)  # fmt: skip
def test_dst_fire_times(schedule: str, tz: str, start: str, end: str, expected: list[str]) -> None:
    fires = fire_times_between(validate_schedule(schedule, tz), at(start), at(end))
    assert isos(fires) == [e.replace("Z", ":00Z") for e in expected]


@pytest.mark.parametrize(
    "schedule,tz,first_day,days",
    [
        ("30 2 * * *", "Europe/Berlin", "2026-03-27", 4),
        ("30 2 * * *", "Europe/Berlin", "2026-10-23", 4),
        ("30 1 * * *", "America/New_York", "2026-10-30", 4),
        ("30 2 * * *", "America/New_York", "2026-10-30", 4),
        ("30 2 * * *", "America/New_York", "2026-03-06", 4),
        ("0 0 * * *", "America/Havana", "2026-03-06", 4),  # Cuba springs forward at midnight
    ],
)
def test_daily_fires_once_per_local_day(schedule: str, tz: str, first_day: str, days: int) -> None:
    zone = ZoneInfo(tz)
    start = datetime.fromisoformat(first_day).replace(tzinfo=zone)
    end = start + timedelta(days=days)
    fires = fire_times_between(validate_schedule(schedule, tz), start, end)
    local_days = [fire.astimezone(zone).date() for fire in fires]
    assert len(local_days) == len(set(local_days)) == days


@pytest.mark.parametrize(
    "schedule,tz,after,expected",
    [
        ("30 1 * * *", "America/New_York", "2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z"),  # not again at 01:30 EST
        ("30 1 * * *", "America/New_York", "2026-11-01T06:15:00Z", "2026-11-02T06:30:00Z"),  # from 01:15 EST
        ("45 1 * * *", "America/New_York", "2026-11-01T06:15:00Z", "2026-11-02T06:45:00Z"),
        ("0 2 * * *", "America/New_York", "2026-11-01T06:59:59Z", "2026-11-01T07:00:00Z"),
        ("*/30 * * * *", "Europe/Berlin", "2026-10-25T01:00:00Z", "2026-10-25T02:00:00Z"),
        ("*/30 * * * *", "Europe/Berlin", "2026-10-25T01:45:00Z", "2026-10-25T02:00:00Z"),
        ("*/30 * * * *", "Europe/Berlin", "2026-03-29T00:59:00Z", "2026-03-29T01:00:00Z"),
        ("*/30 * * * *", "Europe/Berlin", "2026-03-29T01:00:00Z", "2026-03-29T01:30:00Z"),  # 03:00 is not repeated
        ("30 2 * * *", "Europe/Berlin", "2026-03-29T00:59:59Z", "2026-03-29T01:00:00Z"),
        ("30 2 * * *", "Europe/Berlin", "2026-03-29T01:00:00Z", "2026-03-30T00:30:00Z"),
    ],
)
def test_next_after_around_transitions(schedule: str, tz: str, after: str, expected: str) -> None:
    assert validate_schedule(schedule, tz).next_after(at(after)) == at(expected)


@pytest.mark.parametrize(
    "schedule,tz,day",
    [
        ("*/30 * * * *", "Europe/Berlin", "2026-03-29"),
        ("*/30 * * * *", "Europe/Berlin", "2026-10-25"),
        ("0 * * * *", "America/New_York", "2026-03-08"),
        ("0 * * * *", "America/New_York", "2026-11-01"),
        ("30 1 * * *", "America/New_York", "2026-11-01"),
        ("30 2 * * *", "Europe/Berlin", "2026-03-29"),
        ("45 1,2 * * *", "Australia/Lord_Howe", "2026-04-05"),  # a 30-minute fall back
        ("7 * * * *", "Australia/Lord_Howe", "2026-10-04"),  # a 30-minute spring forward
        ("@every 13m", "Europe/Berlin", "2026-03-29"),
    ],
)
def test_next_and_last_agree(schedule: str, tz: str, day: str) -> None:
    """Around a transition, last_at_or_before(t) <= t < next_after(t) and they are consecutive fires."""
    parsed = validate_schedule(schedule, tz)
    start = datetime.fromisoformat(day).replace(tzinfo=UTC) - timedelta(hours=14)
    for step in range(0, 48 * 60, 7):
        t = start + timedelta(minutes=step, seconds=step % 60)
        following, latest = parsed.next_after(t), parsed.last_at_or_before(t)
        assert latest <= t < following
        assert parsed.next_after(latest) == following
        assert parsed.last_at_or_before(following) == following
        assert latest.tzinfo is UTC and following.tzinfo is UTC


# --- fire_times_between ---------------------------------------------------------------


def test_fire_times_between_is_half_open_and_bounded() -> None:
    every_minute = validate_schedule("* * * * *")
    assert isos(fire_times_between(every_minute, at("2026-01-01T00:00Z"), at("2026-01-01T00:02Z"))) == [
        "2026-01-01T00:01:00Z",
        "2026-01-01T00:02:00Z",
    ]
    assert fire_times_between(every_minute, at("2026-01-01T00:00:01Z"), at("2026-01-01T00:00:59Z")) == []
    assert (
        len(fire_times_between(validate_schedule("@every 1s"), at("2026-01-01T00:00Z"), at("2026-01-01T02:46:40Z")))
        == 10_000
    )
    with pytest.raises(ValueError, match="more than 10000 fire times"):
        fire_times_between(validate_schedule("@every 1s"), at("2026-01-01T00:00Z"), at("2026-01-01T02:46:41Z"))
