"""Which failures are outages (503 `unavailable`, GraphQL `UNAVAILABLE`) and which stay bugs (500)."""

from __future__ import annotations

import sqlite3

import asyncpg  # type: ignore[import-untyped]
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from tortoise.exceptions import DBConnectionError, IntegrityError, OperationalError

from app.api.outages import DATABASE_DOWN, REDIS_DOWN, as_unavailable


@pytest.mark.parametrize(
    ("exc", "message"),
    [
        (RedisConnectionError("Error 111 connecting"), REDIS_DOWN),
        (OperationalError("database is locked"), DATABASE_DOWN),
        (OperationalError("attempt to write a readonly database"), DATABASE_DOWN),
        (sqlite3.OperationalError("unable to open database file"), DATABASE_DOWN),
        (DBConnectionError("can't connect"), DATABASE_DOWN),
        (ConnectionRefusedError(111, "Connect call failed"), DATABASE_DOWN),
        (asyncpg.CannotConnectNowError("the database system is shutting down"), DATABASE_DOWN),
        (asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"), DATABASE_DOWN),
    ],
)
def test_outages_become_503(exc: Exception, message: str) -> None:
    unavailable = as_unavailable(exc)
    assert unavailable is not None
    assert (unavailable.status, unavailable.code, unavailable.message) == (503, "unavailable", message)


def test_an_outage_wrapped_by_the_orm_is_found_through_its_cause() -> None:
    try:
        try:
            raise ConnectionRefusedError(111, "refused")
        except ConnectionRefusedError as inner:
            raise RuntimeError("query failed") from inner
    except RuntimeError as outer:
        assert as_unavailable(outer) is not None


@pytest.mark.parametrize(
    "exc",
    [
        OperationalError("no such table: job"),
        OperationalError('syntax error at or near "SELEC"'),
        IntegrityError("UNIQUE constraint failed: job.id"),
        ValueError("a bug"),
    ],
)
def test_mistakes_are_not_outages(exc: Exception) -> None:
    assert as_unavailable(exc) is None
