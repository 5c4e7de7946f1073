"""Page bounds shared by every paginated listing, whichever transport asks."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from tortoise.models import Model
from tortoise.queryset import QuerySet

from app.platform.errors import Invalid

T = TypeVar("T")
M = TypeVar("M", bound=Model)
# Far beyond any real table, and well inside every database's 64-bit integers.
MAX_OFFSET = 10**12


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

    @classmethod
    def build(cls, limit: int | str | None, offset: int | str | None, *, default: int, maximum: int) -> PageRequest:
        limit_msg = f"limit must be an integer between 1 and {maximum}"
        offset_msg = f"offset must be an integer of 0 or more (at most {MAX_OFFSET})"
        lim = default if limit is None else as_int(limit, limit_msg, "invalid_limit")
        off = 0 if offset is None else as_int(offset, offset_msg, "invalid_offset")
        if not 1 <= lim <= maximum:
            raise Invalid(limit_msg, code="invalid_limit")
        if not 0 <= off <= MAX_OFFSET:
            raise Invalid(offset_msg, code="invalid_offset")
        return cls(limit=lim, offset=off)


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int


async def fetch_page(
    query: QuerySet[M], page: PageRequest, total: Callable[[], Awaitable[int]] | None = None
) -> Page[M]:
    """One page, newest first: ids grow with creation time, and every paged table indexes (filter, id).

    `total` counts the rows when the table keeps a cheaper count than COUNT(*) over the query.
    """
    rows = await query.order_by("-id").offset(page.offset).limit(page.limit)
    count = await total() if total is not None else await query.count()
    return Page(items=list(rows), total=count, limit=page.limit, offset=page.offset)
