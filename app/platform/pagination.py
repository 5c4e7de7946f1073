"""Page bounds shared by every paginated listing, whichever transport asks."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Generic, TypeVar

from tortoise.models import Model
from tortoise.queryset import QuerySet

from app.platform.errors import Invalid

T = TypeVar("T")
M = TypeVar("M", bound=Model)
# An offset walks that many index entries before the page (40 ms at 500,000 runs, bench/NOTES.md, B3): deeper than
# this, the keyset cursor (`before`, each page's `nextBefore`) serves any depth at the cost of the first page.
MAX_OFFSET = 10_000


def as_int(value: int | str, message: str, code: str) -> int:
    # Query strings arrive as text; parsing here keeps one message, naming the bounds, for every transport.
    if isinstance(value, bool):
        raise Invalid(message, code=code)
    if isinstance(value, int):
        return value
    try:
        return int(value.strip(), 10)
    except ValueError as exc:
        raise Invalid(message, code=code) from exc


@dataclass(frozen=True)
class PageRequest:
    limit: int
    offset: int
    before: int | None = None  # keyset: only entries with a smaller id (the previous page's `nextBefore`)

    @classmethod
    def build(
        cls,
        limit: int | str | None,
        offset: int | str | None,
        *,
        default: int,
        maximum: int,
        before: int | str | None = None,
    ) -> PageRequest:
        limit_msg = f"limit must be an integer between 1 and {maximum}"
        offset_msg = (
            f"offset must be an integer of 0 or more (at most {MAX_OFFSET}; page deeper with before=<id>, each page's "
            "nextBefore)"
        )
        before_msg = f"before must be an entry id: an integer between 1 and {MAX_ID}"
        lim = default if limit is None else as_int(limit, limit_msg, "invalid_limit")
        off = 0 if offset is None else as_int(offset, offset_msg, "invalid_offset")
        cursor = None if before is None else as_int(before, before_msg, "invalid_before")
        if not 1 <= lim <= maximum:
            raise Invalid(limit_msg, code="invalid_limit")
        if not 0 <= off <= MAX_OFFSET:
            raise Invalid(offset_msg, code="invalid_offset")
        if cursor is not None and not 1 <= cursor <= MAX_ID:
            raise Invalid(before_msg, code="invalid_before")
        return cls(limit=lim, offset=off, before=cursor)


MAX_ID = 2**63 - 1


def parse_instant(value: datetime | str | None, name: str) -> datetime | None:
    """An ISO 8601 instant of a filter (`since`, `until`), in UTC (the stores compare UTC); one without an offset
    is UTC."""
    if value is None:
        return None
    message = f"{name} must be an ISO 8601 instant such as 2024-01-15T06:00:00Z"
    try:
        moment = value if isinstance(value, datetime) else datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except (ValueError, OverflowError) as exc:  # OverflowError: an offset that moves it past year 9999
        raise Invalid(message, code=f"invalid_{name}") from exc


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int
    more: bool = False  # entries follow this page (fetch_page reads one more than it answers to know)

    @property
    def next_before(self) -> int | None:
        """The `before` of the next page (the last entry's id), or None when this page is the last."""
        if not self.more or not self.items:
            return None
        last: object = getattr(self.items[-1], "id", None)
        return last if isinstance(last, int) else None


async def fetch_page(
    query: QuerySet[M], page: PageRequest, total: Callable[[], Awaitable[int]] | None = None
) -> Page[M]:
    """One page, newest first: ids grow with creation time, and every paged table indexes (filter, id). With
    `before` (keyset) the page starts below that id, at the same cost however deep; `total` counts every entry the
    filters match, whatever `before` says.

    `total` counts the rows when the table keeps a cheaper count than COUNT(*) over the query.
    """
    paged = query if page.before is None else query.filter(id__lt=page.before)
    rows = list(await paged.order_by("-id").offset(page.offset).limit(page.limit + 1))
    count = await total() if total is not None else await query.count()
    return Page(
        items=rows[: page.limit], total=count, limit=page.limit, offset=page.offset, more=len(rows) > page.limit
    )
