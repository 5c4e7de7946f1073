"""SQLite reads and inserts outside transactions run inline on connections of their own, within a budget
(app/adapters/tortoise/sqlite.py)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
from tortoise import connections
from tortoise.exceptions import IntegrityError, OperationalError
from tortoise.transactions import in_transaction

from app.adapters.tortoise import sqlite as sqlite_client
from app.data.activity import Activity
from app.data.jobs import Job
from app.data.runs import Run
from app.engine import runs
from app.platform.runtime import Runtime
from app.platform.timefmt import utcnow
from tests.factories import make_job
from tests.support.processes import commit_from_another_process

pytestmark = [pytest.mark.sqlite_only, pytest.mark.serial]
# A SELECT (only those are tried inline) that takes far longer than the inline budget.
SLOW = (
    "SELECT (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 3000000)"
    " SELECT COUNT(*) FROM c) AS n"
)


async def test_reads_run_inline_and_see_every_committed_write(orm: Runtime) -> None:
    client = connections.get("default")
    await make_job(id="a")
    assert isinstance(client, sqlite_client.InlineReadSqliteClient) and client._reader is not None
    assert [j.id for j in await Job.filter(id="a")] == ["a"]  # committed by the writer, read by the reader
    await Job.filter(id="a").update(name="renamed")
    assert (await Job.get(id="a")).name == "renamed"


async def test_the_data_version_changes_with_every_commit_by_anyone_and_only_then(orm: Runtime) -> None:
    client = connections.get("default")
    assert isinstance(client, sqlite_client.InlineReadSqliteClient)
    path = client.filename
    await Job.all().count()  # the read connection opens with the first statement
    seen = [client.data_version()]
    assert seen[0] is not None

    def changed() -> bool:
        seen.append(client.data_version())
        return seen[-1] != seen[-2]

    await Job.all().count()
    assert not changed()  # reads change nothing
    await make_job(id="a")  # an insert on the inline writer
    assert changed()
    await Job.filter(id="a").update(name="renamed")  # an update through tortoise's connection
    assert changed()
    async with in_transaction() as conn:
        await Job.filter(id="a").using_db(conn).update(name="inside")
        assert not changed()  # not committed yet
    assert changed()
    with pytest.raises(RuntimeError):
        async with in_transaction() as conn:
            await Job.filter(id="a").using_db(conn).update(name="rolled back")
            raise RuntimeError
    assert not changed()
    # Another process's commit (another API instance or a worker on the same file).
    await commit_from_another_process(path, "UPDATE job SET name = 'x'")
    assert changed()
    assert not changed()

    # SQLite's number is per connection: a new read connection (the client closed and opened again) starts
    # its own count, which must never match a value handed out before.
    before = client.data_version()
    await client.close()
    await client.create_connection(with_db=True)
    after = client.data_version()
    assert before is not None and after is not None and after[0] == before[0] + 1


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
    gaps: list[float] = []

    async def tick() -> None:  # the event loop's longest stall while the slow read runs
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    await client.execute_query_dict("SELECT 1 AS one")  # the reader opens with the first statement
    assert client._reader is not None
    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0.01)
    started = time.perf_counter()
    try:
        rows = await client.execute_query_dict(SLOW)
        took = time.perf_counter() - started
        await asyncio.sleep(0.01)  # the ticker records the gap a stall left
    finally:
        ticker.cancel()
    assert rows == [{"n": 3_000_000}]
    stall = max(gaps)
    print(f"slow read: {1000 * took:.0f} ms, longest loop stall {1000 * stall:.1f} ms")
    # Inline, the whole read would have blocked the loop; the budget (2 ms of CPU) cut it short.
    assert stall < min(0.1, took / 2)


async def test_writes_never_take_the_inline_path(orm: Runtime) -> None:
    client = connections.get("default")
    await make_job(id="a")
    seen: list[str] = []
    client._reader.set_trace_callback(seen.append)  # what the inline reader is asked to run
    try:
        await client.execute_query("UPDATE job SET name = ? WHERE id = ?", ["direct", "a"])
        assert (await Job.get(id="a")).name == "direct"
    finally:
        client._reader.set_trace_callback(None)
    assert not any("UPDATE" in statement for statement in seen), seen
    assert any(statement.startswith("SELECT") for statement in seen), seen  # the read did run there


def _slow(n: int) -> str:
    """A SELECT far over the inline budget (tens of milliseconds), its text distinct for each n."""
    return (
        f"SELECT (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {n})"
        " SELECT COUNT(*) FROM c) AS n"
    )


async def test_a_statement_over_budget_goes_straight_to_the_worker_thread_next_time(
    orm: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = connections.get("default")
    await client.execute_query_dict("SELECT 1 AS one")
    assert client._reader is not None
    seen: list[str] = []
    client._reader.set_trace_callback(seen.append)
    try:
        assert await client.execute_query_dict(_slow(400_000)) == [{"n": 400_000}]
        assert [s for s in seen if "RECURSIVE" in s], seen  # first time: tried inline, interrupted
        seen.clear()
        assert await client.execute_query_dict(_slow(400_000)) == [{"n": 400_000}]
        assert not [s for s in seen if "RECURSIVE" in s], seen  # remembered: not tried inline again
        assert await client.execute_query_dict("SELECT 2 AS two") == [{"two": 2}]
        assert "SELECT 2 AS two" in seen  # other statements still run inline
        seen.clear()
        monkeypatch.setattr(sqlite_client, "SLOW_SQL_RETRY_SECONDS", 0.0)
        assert await client.execute_query_dict(_slow(400_001)) == [{"n": 400_001}]  # remembered at once due
        seen.clear()
        assert await client.execute_query_dict(_slow(400_001)) == [{"n": 400_001}]
        assert [s for s in seen if "RECURSIVE" in s], seen  # its time is up: tried inline again
    finally:
        client._reader.set_trace_callback(None)


async def test_a_statement_is_remembered_as_slow_with_its_parameters(orm: Runtime) -> None:
    # A page's SQL is the same at offset 0 and at offset 500,000: only the slow parameters skip the inline try.
    client = connections.get("default")
    await client.execute_query_dict("SELECT 1 AS one")
    assert client._reader is not None
    counting = (
        "SELECT (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?)"
        " SELECT COUNT(*) FROM c) AS n"
    )
    assert await client.execute_query_dict(counting, [400_000]) == [{"n": 400_000}]
    seen: list[str] = []
    client._reader.set_trace_callback(seen.append)
    try:
        assert await client.execute_query_dict(counting, [400_000]) == [{"n": 400_000}]
        assert not [s for s in seen if "RECURSIVE" in s], seen  # remembered with its parameter
        assert await client.execute_query_dict(counting, [10]) == [{"n": 10}]
        assert [s for s in seen if "RECURSIVE" in s], seen  # the same text, cheap parameter: inline
    finally:
        client._reader.set_trace_callback(None)


async def test_the_memory_of_slow_statements_is_bounded(orm: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_client, "SLOW_SQL_MEMORY", 2)
    client = connections.get("default")
    for n in (300_001, 300_002, 300_003):
        assert await client.execute_query_dict(_slow(n)) == [{"n": n}]
    assert [text for text, _ in client._slow] == [_slow(300_002), _slow(300_003)]  # least recently seen: gone
    seen: list[str] = []
    client._reader.set_trace_callback(seen.append)
    try:
        await client.execute_query_dict(_slow(300_002))  # remembered: moves to the most recent end
        await client.execute_query_dict(_slow(300_004))
    finally:
        client._reader.set_trace_callback(None)
    assert not [s for s in seen if "300002" in s] and [s for s in seen if "300004" in s], seen
    assert [text for text, _ in client._slow] == [_slow(300_002), _slow(300_004)]


async def test_a_statement_that_fails_inline_for_another_reason_is_not_remembered_as_slow(orm: Runtime) -> None:
    client = connections.get("default")
    await client.execute_query_dict("SELECT 1 AS one")  # the reader opens with the first statement
    assert client._reader is not None
    with pytest.raises(OperationalError, match="no such table"):
        await client.execute_query_dict("SELECT * FROM no_such_table")  # fails inline, then on the thread
    assert not client._slow


async def test_an_insert_outside_a_transaction_runs_inline_and_is_committed(orm: Runtime) -> None:
    client = connections.get("default")
    await make_job(id="a")
    assert client._writer is not None
    seen: list[str] = []
    client._writer.set_trace_callback(seen.append)
    try:
        entry = await Activity.create(event="jobs.trigger", job_id="a", actor="user:1")
    finally:
        client._writer.set_trace_callback(None)
    assert any(statement.startswith('INSERT INTO "activity"') for statement in seen), seen
    assert entry.id > 0
    # Committed: the inline reader and tortoise's own connection (inside a transaction) both see it.
    assert [a.id for a in await Activity.filter(job_id="a")] == [entry.id]
    async with in_transaction() as conn:
        assert await Activity.filter(id=entry.id).using_db(conn).count() == 1


@pytest.mark.parametrize("explicit", [True, False], ids=["using_db", "transaction-context"])
async def test_an_insert_inside_a_transaction_stays_in_it(orm: Runtime, explicit: bool) -> None:
    client = connections.get("default")
    await make_job(id="a")
    seen: list[str] = []
    client._writer.set_trace_callback(seen.append)
    try:
        with pytest.raises(RuntimeError):
            async with in_transaction() as conn:
                # With or without `using_db`: tortoise routes the context's models to its transaction's connection.
                using = {"using_db": conn} if explicit else {}
                await Activity.create(event="jobs.trigger", job_id="a", actor="user:1", **using)
                raise RuntimeError("roll back")
    finally:
        client._writer.set_trace_callback(None)
    assert seen == []
    assert await Activity.filter(job_id="a").count() == 0


async def test_an_inline_insert_that_breaks_a_constraint_raises_tortoises_integrity_error(orm: Runtime) -> None:
    client = connections.get("default")
    await Run.create(job_id="a", token="t-1", triggered_by="user:1", started_at=utcnow())
    seen: list[str] = []
    client._writer.set_trace_callback(seen.append)
    try:
        with pytest.raises(IntegrityError):
            await Run.create(job_id="a", token="t-1", triggered_by="user:1", started_at=utcnow())
    finally:
        client._writer.set_trace_callback(None)
    assert any(statement.startswith('INSERT INTO "job_run"') for statement in seen), seen  # refused inline
    assert await Run.filter(token="t-1").count() == 1


async def test_an_insert_returning_rows_runs_inline_answers_them_and_is_committed(orm: Runtime) -> None:
    """The run records of a start (app.engine.runs.insert): INSERT ... ON CONFLICT DO NOTHING RETURNING."""
    client = connections.get("default")
    await make_job(id="a")  # the client is connected on first use
    seen: list[str] = []
    client._writer.set_trace_callback(seen.append)
    rows = [runs.NewRun("a", "t-1", "user:1", None), runs.NewRun("b", "t-2", runs.SCHEDULER, utcnow())]
    try:
        first = await runs.insert(rows, utcnow())
        again = await runs.insert(rows[:1], utcnow())  # the same token: no row, no error
    finally:
        client._writer.set_trace_callback(None)
    # Both statements ran on the inline writer (SQLite traces a statement again as each of its triggers runs).
    assert len({statement for statement in seen if statement.startswith("INSERT INTO job_run (")}) == 2, seen
    assert [r.token if r else None for r in first] == ["t-1", "t-2"] and again == [None]
    assert first[0] is not None and first[0].id > 0
    other = sqlite3.connect(client.filename)  # committed: another connection sees both
    try:
        assert other.execute("SELECT COUNT(*) FROM job_run").fetchone() == (2,)
    finally:
        other.close()


async def test_an_insert_returning_rows_waits_out_another_writer_and_still_answers(orm: Runtime) -> None:
    client = connections.get("default")
    other = sqlite3.connect(client.filename, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # holds SQLite's write lock: the inline path gives way to the thread's
        insert = asyncio.create_task(runs.insert([runs.NewRun("held", "t-3", "user:1", None)], utcnow()))
        await asyncio.sleep(0.1)
        assert not insert.done()
        other.execute("COMMIT")
        [run] = await asyncio.wait_for(insert, timeout=5)
    finally:
        other.close()
    assert run is not None and await Run.filter(id=run.id, token="t-3").exists()


@pytest.mark.parametrize(
    ("pragmas", "inline"), [({}, True), ({"synchronous": "FULL"}, False), ({"journal_mode": "DELETE"}, False)]
)
async def test_inserts_run_inline_only_where_a_commit_needs_no_fsync(
    orm: Runtime, tmp_path: Path, pragmas: dict[str, str], inline: bool
) -> None:
    # WAL with synchronous NORMAL (or OFF) appends to the WAL; FULL, or a rollback journal, syncs every commit,
    # which must not happen on the event loop's thread.
    client = sqlite_client.InlineReadSqliteClient(
        str(tmp_path / "own.sqlite3"), connection_name="own", **{"synchronous": "NORMAL", **pragmas}
    )
    await client.create_connection(with_db=True)
    try:
        await client.execute_script("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        assert (client._writer is not None) is inline
        row_id = await client.execute_insert("INSERT INTO t (v) VALUES (?)", ["x"])
        assert row_id == 1
        assert await client.execute_query_dict("SELECT v FROM t") == [{"v": "x"}]
    finally:
        await client.close()


async def test_an_insert_waits_out_another_writer_without_stalling_the_event_loop(orm: Runtime) -> None:
    client = connections.get("default")
    await make_job(id="a")
    other = sqlite3.connect(client.filename, isolation_level=None)  # another process's connection, say
    gaps: list[float] = []

    async def tick() -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    ticker = asyncio.create_task(tick())
    try:
        other.execute("BEGIN IMMEDIATE")  # holds SQLite's write lock
        other.execute("INSERT INTO activity (event, actor, details, created_at) VALUES ('held', 'x', '{}', '')")
        insert = asyncio.create_task(Activity.create(event="jobs.trigger", job_id="a", actor="user:1"))
        await asyncio.sleep(0.1)
        assert not insert.done()  # waiting for the lock, not failing
        other.execute("COMMIT")
        entry = await asyncio.wait_for(insert, timeout=5)
    finally:
        ticker.cancel()
        other.close()
    assert await Activity.filter(id=entry.id).count() == 1
    assert max(gaps) < 0.05, f"the event loop stalled {1000 * max(gaps):.0f} ms"


@pytest.mark.parametrize("path", ["transaction", "statement"])
async def test_a_connection_cut_off_during_its_set_up_is_dropped_not_kept(
    orm: Runtime, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # tortoise keeps its new connection before it runs the PRAGMAs: a cancel in between used to leave the
    # process on a connection without foreign keys and with synchronous=FULL, and (on the statement path)
    # holding the lock for good. A statement already waiting for the lock must not get the dropped connection.
    client = connections.get("default")
    assert isinstance(client, sqlite_client.InlineReadSqliteClient)
    await make_job(id="a")
    in_set_up, resume = asyncio.Event(), asyncio.Event()
    execute = aiosqlite.Connection.execute

    async def held_execute(self: aiosqlite.Connection, sql: str, parameters: Any = None) -> aiosqlite.Cursor:
        if sql.startswith("PRAGMA") and not in_set_up.is_set():  # the first of tortoise's set-up PRAGMAs
            in_set_up.set()
            await resume.wait()
        return await execute(self, sql, parameters)

    async def use(name: str) -> int:
        statement = f"UPDATE job SET name = '{name}' WHERE id = 'a'"
        if path == "transaction":
            async with in_transaction() as conn:
                return (await conn.execute_query(statement))[0]
        return (await client.execute_query(statement))[0]

    await client.close()
    monkeypatch.setattr(aiosqlite.Connection, "execute", held_execute)
    task = asyncio.create_task(use("cut"))
    await in_set_up.wait()
    queued = asyncio.create_task(use("queued"))
    await asyncio.sleep(0.05)  # the queued statement waits for the lock
    assert not queued.done()
    task.cancel()
    resume.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with asyncio.timeout(5):
        assert await queued == 1
        async with in_transaction() as conn:
            (foreign_keys,) = (await conn.execute_query_dict("PRAGMA foreign_keys"))[0].values()
            (synchronous,) = (await conn.execute_query_dict("PRAGMA synchronous"))[0].values()
    assert (foreign_keys, synchronous) == (1, 1), "the connection cut off during its set-up was kept"
    assert client._reader is not None and (await Job.get(id="a")).name == "queued"
