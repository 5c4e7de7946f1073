"""SQLite reads outside transactions run inline on a second connection, within a budget (app/sqlite_client)."""

from __future__ import annotations

import time

import pytest
from tortoise import connections
from tortoise.transactions import in_transaction

from app import sqlite_client
from app.jobs.models import Job
from app.runtime import Runtime
from tests.factories import make_job

pytestmark = pytest.mark.sqlite_only
SLOW = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 3000000) SELECT COUNT(*) AS n FROM c"


async def test_reads_run_inline_and_see_every_committed_write(orm: Runtime) -> None:
    client = connections.get("default")
    await make_job(id="a")
    assert isinstance(client, sqlite_client.InlineReadSqliteClient) and client._reader is not None
    assert [j.id for j in await Job.filter(id="a")] == ["a"]  # committed by the writer, read by the reader
    await Job.filter(id="a").update(name="renamed")
    assert (await Job.get(id="a")).name == "renamed"


async def test_a_transaction_reads_its_own_uncommitted_writes(orm: Runtime) -> None:
    await make_job(id="a", name="before")
    client = connections.get("default")
    async with in_transaction() as conn:
        await Job.filter(id="a").using_db(conn).update(name="inside")
        assert (await Job.get(id="a").using_db(conn)).name == "inside"  # through tortoise's transaction
        # Outside the transaction (the client itself, as another request would use it): committed data only.
        assert await client.execute_query_dict("SELECT name FROM job WHERE id = 'a'") == [{"name": "before"}]
    assert (await Job.get(id="a")).name == "inside"


async def test_a_read_over_budget_moves_to_the_worker_thread_and_still_answers(orm: Runtime) -> None:
    client = connections.get("default")
    started = time.perf_counter()
    rows = await client.execute_query_dict(SLOW)
    assert rows == [{"n": 3_000_000}]
    # The inline attempt gave up after its budget; the answer came from tortoise's own path.
    print(f"slow read: {1000 * (time.perf_counter() - started):.0f} ms, budget {sqlite_client.INLINE_BUDGET_SECONDS}")


async def test_writes_never_take_the_inline_path(orm: Runtime) -> None:
    client = connections.get("default")
    await make_job(id="a")
    await client.execute_query("UPDATE job SET name = ? WHERE id = ?", ["direct", "a"])
    assert (await Job.get(id="a")).name == "direct"
