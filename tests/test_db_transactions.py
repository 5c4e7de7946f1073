"""Transactions that are cancelled as they begin give their connection back (app/sqlite_client,
app/postgres_client), on both backends."""

from __future__ import annotations

import asyncio
import contextlib

from tortoise import connections
from tortoise.transactions import in_transaction

from app import postgres_client, sqlite_client
from app.jobs.models import Job
from app.runtime import Runtime
from tests.factories import make_job, wait_until
from tests.support.processes import commit_from_another_process


async def _rename(name: str) -> None:
    async with in_transaction() as conn:
        await Job.filter(id="a").using_db(conn).update(name=name)


async def test_a_transaction_cancelled_at_any_point_leaves_the_database_usable(orm: Runtime) -> None:
    # tortoise's own contexts kept SQLite's connection lock, or a PostgreSQL pool connection, when cancelled
    # while BEGIN ran; on SQLite the next transaction then waited forever, on PostgreSQL after as many such
    # cancels as the pool has connections. Cancel at each turn of the event loop in turn, so that the cancels
    # land in the pool or lock, in BEGIN, in the body and in the commit.
    client = connections.get("default")
    assert isinstance(client, sqlite_client.InlineReadSqliteClient | postgres_client.CancelSafeAsyncpgClient)
    await make_job(id="a")
    held_when_cancelled = 0
    for turns in range(40):
        task = asyncio.create_task(_rename(f"cancelled-{turns}"))
        for _ in range(turns):
            await asyncio.sleep(0)
        held_when_cancelled += _connection_taken(client) and not task.done()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        async with asyncio.timeout(5):  # hung for good before
            await _rename(f"after-{turns}")
        assert (await Job.get(id="a")).name == f"after-{turns}"
    assert held_when_cancelled >= 5, "too few cancels landed while a transaction held a connection"

    async def all_given_back() -> bool:
        return _all_connections_back(client)

    await wait_until(all_given_back, timeout=5)
    if isinstance(client, sqlite_client.InlineReadSqliteClient):
        # No transaction left open either: another process can still write.
        await commit_from_another_process(client.filename, "UPDATE job SET name = 'other'")
        assert (await Job.get(id="a")).name == "other"


def _connection_taken(client: object) -> bool:
    if isinstance(client, sqlite_client.InlineReadSqliteClient):
        return client._lock.locked()
    assert isinstance(client, postgres_client.CancelSafeAsyncpgClient)
    return bool(client._pool._queue.qsize() < client._pool._maxsize)


def _all_connections_back(client: object) -> bool:
    if isinstance(client, sqlite_client.InlineReadSqliteClient):
        raw = client._connection
        return not client._lock.locked() and raw is not None and not raw._conn.in_transaction
    assert isinstance(client, postgres_client.CancelSafeAsyncpgClient)
    return bool(client._pool._queue.qsize() == client._pool._maxsize)
