"""Schedule arithmetic: validate a job's schedule string and compute its fire times.

Pure functions: the instant to compute from is always an argument, never read from a clock.

Accepted forms: a 5-field cron expression, a macro (@hourly, @daily, @weekly, @monthly, @yearly, plus
@annually and @midnight) or `@every <Go duration>` (at least 1s). Every fire time is a UTC instant.

`@every d` fires at the instants that are whole multiples of `d` since the Unix epoch, whatever the
time zone: every process computes the same fire times, and fire ids (job + fire time) agree.

Cron and macros name wall-clock times in the schedule's time zone (UTC by default). Across DST changes:

* Fall back (an hour repeats): each wall-clock time fires at most once, at its first occurrence. So
  `30 1 * * *` fires once in America/New_York on the fall-back day, and `0 * * * *` / `*/30 * * * *`
  do not fire again during the repeated hour (one real hour without fires).
* Spring forward (an hour is skipped): a wall-clock time that does not exist fires at the instant the
  clock jumps (02:30 in Europe/Berlin fires at 03:00 CEST). Fires landing on the same instant collapse
  into one, so `0 * * * *` fires once at 03:00, not for both 02:00 and 03:00.

Missed fires are never replayed in a burst: a job's catch-up policy runs at most the latest one within its
window (app.engine.skips.plan_missed).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from typing import cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter

FORMS = (
    "a 5-field cron expression, a macro (@hourly, @daily, @weekly, @monthly, @yearly) "
    "or @every <duration> such as @every 5m"
)
DURATION_FORMS = "use forms like 90s, 5m, 1h30m, 24h"
MIN_INTERVAL = timedelta(seconds=1)
MAX_FIRES = 10_000

MACROS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}

# Go accepts both the micro sign (U+00B5) and the Greek mu (U+03BC).
_UNIT_NS = {"ns": 1, "us": 10**3, "µs": 10**3, "μs": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}
_COMPONENT = r"([0-9]+\.?[0-9]*|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h)"
_DURATION_RE = re.compile(rf"(?:{_COMPONENT})+")
_COMPONENT_RE = re.compile(_COMPONENT)
# croniter's H (hashed) and R (random) fields: random ones differ per process, which breaks fire ids.
_HASHED_FIELD_RE = re.compile(r"[hr](\(\d+-\d+\))?(/\d+)?", re.IGNORECASE)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
# Fixed, so that validation does not depend on when it runs.
_PROBE = datetime(2000, 1, 1)


# A duration is a handful of number-unit pairs; a longer text is garbage (and very long digit runs
# would trip Python's int-conversion limit).
MAX_DURATION_CHARS = 64
# Beyond this an interval is a mistake, and datetimes overflow near year 9999.
MAX_INTERVAL = timedelta(days=3660)


class ScheduleError(ValueError):
    """A schedule, duration or time zone that cannot be used; the message says why and what to write instead."""


def parse_go_duration(text: str) -> timedelta:
    """Parse Go's time.ParseDuration format (`90s`, `1h30m`, `1.5h`, `300ms`); sub-microsecond parts are truncated."""
    if text[:1] in ("-", "+"):
        raise ScheduleError(f"{text!r} has a sign; durations must be positive: {DURATION_FORMS}")
    if not _DURATION_RE.fullmatch(text):
        raise ScheduleError(f"{text!r} is not a Go duration; {DURATION_FORMS}")
    if len(text) > MAX_DURATION_CHARS:
        raise ScheduleError(f"{text[:20]!r}... is too long for a duration; {DURATION_FORMS}")
    ns = sum(Fraction(num) * _UNIT_NS[unit] for num, unit in _COMPONENT_RE.findall(text))
    try:
        result = timedelta(microseconds=int(ns // 1000))
    except OverflowError:
        raise ScheduleError(f"{text!r} is too long a duration; {DURATION_FORMS}") from None
    if not result:
        raise ScheduleError(f"{text!r} is zero; durations must be positive: {DURATION_FORMS}")
    return result


def _decimal(us: int, unit_us: int) -> str:
    whole, rest = divmod(us, unit_us)
    width = len(str(unit_us)) - 1
    return f"{whole}.{rest:0{width}d}".rstrip("0") if rest else str(whole)


def format_go_duration(td: timedelta) -> str:
    """The shortest Go duration text for `td` (`1h30m`, `1m30s`, `1.5s`, `300ms`); parses back to `td`."""
    us = td // _US
    if us < 0:
        return "-" + format_go_duration(-td)
    if us < 1_000:
        return f"{us}µs" if us else "0s"
    if us < 1_000_000:
        return _decimal(us, 1_000) + "ms"
    hours, rest = divmod(us, 3_600_000_000)
    minutes, rest = divmod(rest, 60_000_000)
    parts = [
        f"{hours}h" if hours else "",
        f"{minutes}m" if minutes else "",
        _decimal(rest, 1_000_000) + "s" if rest else "",
    ]
    return "".join(parts)


def parse_every(text: str) -> timedelta:
    """An `@every` interval: a Go duration of at least MIN_INTERVAL."""
    every = parse_go_duration(text)
    if every < MIN_INTERVAL:
        raise ScheduleError(
            f"{text!r} is shorter than the minimum interval of {format_go_duration(MIN_INTERVAL)}; {DURATION_FORMS}"
        )
    if every > MAX_INTERVAL:
        raise ScheduleError(f"{text!r} is longer than the maximum interval of {MAX_INTERVAL.days} days")
    return every


def interval_to_schedule(interval: str) -> str:
    """`interval: "24h"` as a schedule string; keeps the user's text, which is what they will recognise."""
    text = interval.strip()
    parse_every(text)
    return f"@every {text}"


def _zone(tz: str | None) -> ZoneInfo:
    try:
        return ZoneInfo("UTC" if tz is None else tz)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a tzdata folder such as "Europe"
        raise ScheduleError(f"unknown IANA time zone {tz!r}; use a name such as UTC or Europe/Berlin") from None


def _aware(moment: datetime, name: str) -> None:
    if moment.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got {moment!r}")


@dataclass(frozen=True)
class Schedule:
    expression: str  # normalised: collapsed cron, lower-case macro, or "@every <the user's duration>"
    tz: ZoneInfo
    every: timedelta | None

    @property
    def cron(self) -> str:
        return MACROS.get(self.expression, self.expression)

    def next_after(self, after: datetime) -> datetime:
        """The first fire strictly after `after`, in UTC."""
        _aware(after, "after")
        if self.every is not None:
            every_us = self.every // _US
            return _EPOCH + (((after - _EPOCH) // _US) // every_us + 1) * every_us * _US
        local = after.astimezone(self.tz)
        # Wall times up to `after`'s own have all fired by `after` (a repeated one fires at its first
        # occurrence); later ones in a repeated hour may have too, hence the loop.
        walls = croniter(self.cron, local.replace(tzinfo=None, fold=0))
        while True:
            fire = _instant(cast(datetime, walls.get_next(datetime)), self.tz)
            if fire > after:
                return fire

    def last_at_or_before(self, at: datetime) -> datetime:
        """The latest fire at or before `at`, in UTC."""
        _aware(at, "at")
        if self.every is not None:
            every_us = self.every // _US
            return _EPOCH + (((at - _EPOCH) // _US) // every_us) * every_us * _US
        local = at.astimezone(self.tz)
        # Wall times up to the end of a repeated hour may still have fired at or before `at`.
        repeated = at - local.replace(fold=0).astimezone(UTC)
        walls = croniter(self.cron, local.replace(tzinfo=None, fold=0) + repeated + timedelta(minutes=1))
        while True:
            fire = _instant(cast(datetime, walls.get_prev(datetime)), self.tz)
            if fire <= at:
                return fire


def _instant(wall: datetime, tz: ZoneInfo) -> datetime:
    """When a naive local wall time fires: its first occurrence, or when the clock jumps over it."""
    first = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
    if first.astimezone(tz).replace(tzinfo=None) == wall:
        return first
    # In a gap fold=0 maps past the jump and fold=1 before it; bisect (in seconds, as tzdb is) for the jump.
    lo = int(wall.replace(tzinfo=tz, fold=1).timestamp())
    hi = int(first.timestamp())
    after_jump = first.astimezone(tz).utcoffset()
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, tz).utcoffset() == after_jump:
            hi = mid
        else:
            lo = mid
    return datetime.fromtimestamp(hi, UTC)


def _validate_every(schedule: str, rest: list[str], tz: ZoneInfo) -> Schedule:
    if len(rest) != 1:
        raise ScheduleError(f"{schedule!r}: @every takes one Go duration such as @every 5m; use {FORMS}")
    try:
        every = parse_every(rest[0])
    except ScheduleError as exc:
        raise ScheduleError(f"{schedule!r}: {exc}") from None
    return Schedule(f"@every {rest[0]}", tz, every)


def _validate_cron(expression: str, fields: list[str], tz: ZoneInfo) -> Schedule:
    if len(fields) != 5:
        extra = " (seconds and year fields are not supported)" if len(fields) in (6, 7) else ""
        raise ScheduleError(f"{expression!r} has {len(fields)} fields{extra}; use {FORMS}")
    if any(_HASHED_FIELD_RE.fullmatch(field) for field in fields):
        raise ScheduleError(f"{expression!r} uses hashed or random fields (H, R), which are not supported; use {FORMS}")
    try:
        croniter(expression, _PROBE).get_next(datetime)
    except (CroniterError, ValueError, KeyError) as exc:
        raise ScheduleError(f"{expression!r} is not a valid cron expression ({exc}); use {FORMS}") from None
    return Schedule(expression, tz, None)


def validate_schedule(schedule: str, tz: str | None = None) -> Schedule:
    """Parse a job's schedule in the IANA zone `tz` (None: UTC); raises ScheduleError saying what is wrong."""
    zone = _zone(tz)
    words = schedule.split()
    if not words:
        raise ScheduleError(f"the schedule is empty; use {FORMS}")
    head = words[0].lower()
    if head == "@every":
        return _validate_every(schedule.strip(), words[1:], zone)
    if head.startswith("@"):
        if len(words) == 1 and head in MACROS:
            return Schedule(head, zone, None)
        raise ScheduleError(f"{schedule.strip()!r} is not a supported schedule; use {FORMS}")
    return _validate_cron(" ".join(words), words, zone)


def fire_times_between(schedule: Schedule, start: datetime, end: datetime) -> list[datetime]:
    """Every fire in (start, end], in order; raises ValueError past MAX_FIRES."""
    fires: list[datetime] = []
    fire = schedule.next_after(start)
    while fire <= end:
        if len(fires) == MAX_FIRES:
            raise ValueError(f"more than {MAX_FIRES} fire times between {start} and {end}")
        fires.append(fire)
        fire = schedule.next_after(fire)
    return fires
