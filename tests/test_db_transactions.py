"""Transactions cancelled as they begin give their connection back (app/adapters/tortoise/sqlite.py and
asyncpg.py), on both backends."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from tortoise import connections
from tortoise.backends.asyncpg.client import TransactionWrapper as AsyncpgTransactionWrapper
from tortoise.backends.sqlite.client import SqliteTransactionWrapper
from tortoise.transactions import in_transaction

from app.adapters.tortoise import asyncpg as asyncpg_client
from app.adapters.tortoise import sqlite as sqlite_client
from app.data.jobs import Job
from app.platform.runtime import Runtime
from tests.factories import make_job, wait_until
from tests.support.processes import commit_from_another_process


async def _rename(name: str) -> None:
    async with in_transaction() as conn:
        await Job.filter(id="a").using_db(conn).update(name=name)


async def test_a_transaction_cancelled_during_its_begin_gives_its_connection_back_with_none_open(
    orm: Runtime, monkeypatch: pytest.MonkeyPatch, loop_errors: list[dict[str, Any]]
) -> None:
    # tortoise's own contexts kept SQLite's connection lock, or a PostgreSQL pool connection, when cancelled
    # while BEGIN ran: on SQLite the next transaction then waited forever, on PostgreSQL after as many such
    # cancels as the pool has connections. The BEGIN still runs once sent: it must be rolled back, or the next
    # transaction's BEGIN would commit it silently, and statements in between would run inside it.
    client = connections.get("default")
    sent = asyncio.Event()  # set just before BEGIN goes to the database
    if isinstance(client, sqlite_client.InlineReadSqliteClient):

        async def sqlite_begin(self: SqliteTransactionWrapper) -> None:
            await self._connection.commit()  # as tortoise's begin, which commits, then sends BEGIN
            sent.set()
            await self._connection.execute("BEGIN")

        monkeypatch.setattr(SqliteTransactionWrapper, "begin", sqlite_begin)
    else:
        tortoise_begin = AsyncpgTransactionWrapper.begin

        async def asyncpg_begin(self: AsyncpgTransactionWrapper) -> None:
            sent.set()
            await tortoise_begin(self)  # whose first await sends BEGIN

        monkeypatch.setattr(AsyncpgTransactionWrapper, "begin", asyncpg_begin)
    await make_job(id="a")
    for attempt in range(8):  # more than the pool's 5 connections
        sent.clear()
        task = asyncio.create_task(_rename(f"cancelled-{attempt}"))
        await sent.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await _usable_again(client, f"after-{attempt}")
    if isinstance(client, sqlite_client.InlineReadSqliteClient):
        # Nothing holds SQLite's write lock: another process can still write.
        await commit_from_another_process(client.filename, "UPDATE job SET name = 'other'")
        assert (await Job.get(id="a")).name == "other"
    assert not loop_errors, f"reported to the event loop: {loop_errors}"


async def test_a_transaction_cancelled_at_any_point_leaves_the_database_usable(orm: Runtime) -> None:
    # Cancels at each turn of the event loop in turn, landing in the lock or the pool, in BEGIN, in the body
    # and in the commit.
    client = connections.get("default")
    await make_job(id="a")
    for turns in range(40):
        task = asyncio.create_task(_rename(f"cancelled-{turns}"))
        for _ in range(turns):
            await asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):  # it may have finished first
            await task
        await _usable_again(client, f"after-{turns}")


async def _usable_again(client: object, name: str) -> None:
    """Every connection comes back with no transaction open, and the next transaction commits."""

    async def given_back() -> bool:
        return await _all_connections_back(client)

    await wait_until(given_back, timeout=5)
    async with asyncio.timeout(5):  # hung for good before
        await _rename(name)
    assert (await Job.get(id="a")).name == name


async def _all_connections_back(client: object) -> bool:
    """No transaction holds a connection, and none is left open."""
    if isinstance(client, sqlite_client.InlineReadSqliteClient):
        raw = client._connection
        if client._lock.locked() or raw is None:
            return False
        # The connection's thread runs its statements in order: once this one has run, so has any BEGIN
        # still queued when the lock was released.
        await raw.execute("SELECT 1")
        return not raw.in_transaction
    assert isinstance(client, asyncpg_client.CancelSafeAsyncpgClient)
    return bool(client._pool.get_idle_size() == client._pool.get_size())


@pytest_asyncio.fixture
async def loop_errors() -> AsyncIterator[list[dict[str, Any]]]:
    """What reached the event loop's exception handler (asyncpg reports a connection released inside a
    transaction there), for the test to assert that nothing did."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    try:
        yield errors
    finally:
        loop.set_exception_handler(previous)
