"""Which low-level failures mean a backing store is out of reach (the client should retry: 503
`unavailable`) rather than a bug (500). Both transports ask here, so they agree."""

from __future__ import annotations

import sqlite3

import asyncpg
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from tortoise.exceptions import DBConnectionError, OperationalError

from app.platform.errors import Unavailable

REDIS_DOWN = "Redis is unavailable; try again shortly"
DATABASE_DOWN = "The database is unavailable; try again shortly"

# SQLite's own words for a file that cannot be written or read right now (tortoise passes them on as
# OperationalError, the same class as an SQL mistake, so the message is all there is to go by).
_SQLITE_OUTAGES = (
    "database is locked",
    "database table is locked",
    "unable to open database file",
    "disk i/o error",
    "attempt to write a readonly database",
    "database or disk is full",
)
# PostgreSQL gone or going: refused connections, dropped connections, shutdown in progress.
POSTGRES_OUTAGES = (asyncpg.PostgresConnectionError, asyncpg.OperatorInterventionError)
# Every class an outage may arrive as, for a transport to route to `as_unavailable`.
OUTAGE_CLASSES: tuple[type[Exception], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    DBConnectionError,
    OperationalError,
    sqlite3.OperationalError,
    ConnectionError,
    *POSTGRES_OUTAGES,
)


def as_unavailable(exc: BaseException) -> Unavailable | None:
    """The 503 this failure deserves, or None when it is not an outage."""
    if isinstance(exc, RedisConnectionError | RedisTimeoutError):
        return Unavailable(REDIS_DOWN)
    if _database_down(exc):
        return Unavailable(DATABASE_DOWN)
    return None


def _database_down(exc: BaseException) -> bool:
    if isinstance(exc, (DBConnectionError, ConnectionRefusedError, ConnectionResetError, *POSTGRES_OUTAGES)):
        return True
    if isinstance(exc, OperationalError | sqlite3.OperationalError):
        text = str(exc).lower()
        if any(phrase in text for phrase in _SQLITE_OUTAGES):
            return True
    cause = exc.__cause__
    return cause is not None and cause is not exc and _database_down(cause)
