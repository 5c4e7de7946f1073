"""The wire format of every timestamp: ISO 8601, UTC, milliseconds, `Z`."""

from __future__ import annotations

from datetime import UTC, datetime


def iso_ms(value: datetime | None) -> str | None:
    if value is None:
        return None
    offset = value.utcoffset()
    if offset is None or offset:  # the database's values are UTC already: no conversion for them
        value = value.astimezone(UTC)
    # An f-string rather than strftime: log pages format hundreds of these per request.
    return (
        f"{value.year:04d}-{value.month:02d}-{value.day:02d}T{value.hour:02d}:{value.minute:02d}:"
        f"{value.second:02d}.{value.microsecond // 1000:03d}Z"
    )


def utcnow() -> datetime:
    return datetime.now(UTC)
