"""tortoise's SQLite client, with short reads answered on the event loop's thread.

tortoise drives SQLite through aiosqlite: every statement is handed to a worker thread and back, and
waits behind a per-connection lock held for whole transactions. For a hot read such as `GET /api/jobs`
the hand-off costs more than the query (about a third of a request's CPU, and milliseconds of
scheduling delay on a busy machine). So reads outside a transaction first run on a second, read-only
connection in the calling thread, with SQLite's progress handler as a budget: a read that has used
`INLINE_BUDGET_SECONDS` of this thread's CPU time is interrupted and re-run on the worker thread, so that
a deep page or a large count never keeps the event loop busy for longer than the budget. CPU time, not
wall time, and no garbage collection during the read: on a busy machine the process is descheduled,
and a collection can start inside the progress handler, for milliseconds that have nothing to do with
the query; counted against a wall clock they interrupted short reads only to run them again. Updates,
deletes, transactions (which use tortoise's own wrapper) and anything the read-only connection refuses take
tortoise's path unchanged; inserts, see below.
A statement that ran over its budget is remembered (its text and parameters: the last
`SLOW_SQL_MEMORY` of them, for `SLOW_SQL_RETRY_SECONDS`) and goes straight to the worker thread next
time: otherwise every repeat of a deep page or a large count would burn the whole budget inline again
before being re-run there. The parameters are part of it because a page's SQL is the same at offset 0
(cheap) as at offset 500,000 (slow).
WAL mode (tortoise's default) lets this reader see every committed write without blocking writers.

Inserts outside a transaction (a run record as its handler starts, an activity entry) run the same way on a
third connection, in autocommit: in WAL mode with synchronous=NORMAL the commit is an append to the WAL,
with no fsync, and the thread hop cost more than the statement (a trigger's run record: 0.6 to 1.1 ms through
aiosqlite, most of the time between a worker popping a trigger and starting its handler; B1). That
connection never waits on SQLite's lock inside the event loop (busy_timeout 0): while another connection
(another process, or a transaction here) holds the write lock it tries again on the next turns of the event
loop (`INLINE_WRITE_ATTEMPTS` in all), then takes tortoise's path, whose busy handler waits in steps of 1 ms
and more. It never runs a checkpoint either (wal_autocheckpoint 0): a checkpoint copies the WAL into the
database and syncs it, which is not for the event loop; the thread connection's own commits and every other
process's still run them. It is only used in WAL mode with synchronous OFF or NORMAL (the default here): with
FULL or EXTRA, or another journal mode, a commit waits for an fsync, and inserts keep tortoise's path.

One consequence for code written later: a transaction on tortoise's connection can now see another connection
of this same process commit while it is open, as it always could for other processes. A deferred transaction
that reads before its first write then fails at that write with SQLITE_BUSY_SNAPSHOT instead of waiting; every
transaction here starts with a write (or takes its lock first), which is what keeps that from happening.

Cancellation: tortoise (1.1.9) takes its connection's lock, then awaits (BEGIN, or connecting); cancelled or
failing in between, it never released the lock, and every later transaction, update and thread-path read of
the process waited for it forever. A cancel lands there easily: a reconcile loop cancelled at shutdown, a run
cancelled by the embedded worker's supervisor or its timeout, `/readyz` giving up on its query. So
transactions and statements here take the lock through `_CancelSafeTransactionContext` and
`_CancelSafeConnectionWrapper`, and a connection cut off half-way through its set-up is dropped, not kept
without its PRAGMAs (foreign keys among them).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import aiosqlite
from tortoise.backends.base.client import ConnectionWrapper, TransactionContext
from tortoise.backends.sqlite.client import (
    SqliteClient,
    SqliteTransactionContext,
    SqliteTransactionWrapper,
    translate_exceptions,
)
from tortoise.connection import get_connections

log = logging.getLogger(__name__)

INLINE_BUDGET_SECONDS = 0.002
_PROGRESS_STEPS = 2_000  # SQLite VM instructions between budget checks (a few microseconds)
SLOW_SQL_MEMORY = 256  # statements; the least recently seen is forgotten first
# A remembered statement is tried inline again after this long: the same text may be cheap later
# (a table that shrank), or its parameters may make it cheap most of the time.
SLOW_SQL_RETRY_SECONDS = 30.0
# Inline attempts of an insert while the write lock is taken, each on a later turn of the event loop, before the
# thread path. (A wait in between would be rounded to whole milliseconds by uvloop's timers, longer than most
# commits hold the lock.)
INLINE_WRITE_ATTEMPTS = 4


# Tasks started by `in_background` that are still running: the event loop keeps only weak references.
_background: set[asyncio.Task[None]] = set()


def in_background(cleanup: Coroutine[object, object, None], name: str) -> None:
    """Run `cleanup` in a task of its own, which the app never cancels: for the cleanup a cancelled task owes
    but cannot await (it could be cancelled again, half-way)."""
    task = asyncio.get_running_loop().create_task(cleanup, name=name)
    _background.add(task)
    task.add_done_callback(_background.discard)


def _statement_key(query: str, values: list[Any] | None) -> tuple[str, tuple[Any, ...]] | None:
    """A statement's key in the slow memory, or None for parameters that cannot be one (unhashable)."""
    key = (query, tuple(values or ()))
    try:
        hash(key)
    except TypeError:
        return None
    return key


@dataclass(frozen=True, slots=True)
class _Inserted:
    row_id: int  # the last row inserted
    rows: list[dict[str, Any]]  # what its RETURNING clause gave, if it has one


class _OverBudget(Exception):
    """The inline read ran past its budget (or could not run here); run it on the worker thread."""


class _CancelSafeTransactionContext(SqliteTransactionContext):
    """tortoise's SQLite transaction, except when it fails or is cancelled while it begins: then the lock
    goes to a cleanup task, which rolls back whatever BEGIN the worker thread may still run, then releases it."""

    async def __aenter__(self) -> SqliteTransactionWrapper:
        await self._trxlock.acquire()
        # The wrapper took the client's connection when it was made, before the wait for the lock: a
        # connection dropped meanwhile (see create_connection) must not be used.
        self.connection._connection = self.connection._parent._connection
        token = None
        try:
            await self.ensure_connection()
            token = self.token = get_connections().set(self.connection_name, self.connection)
            await self.connection.begin()
        except (Exception, asyncio.CancelledError):
            if token is not None:
                get_connections().reset(token)
            in_background(self._abandon(), "sqlite-abandoned-begin")
            raise
        wrapper: SqliteTransactionWrapper = self.connection
        return wrapper

    async def _abandon(self) -> None:
        try:
            raw = self.connection._connection
            if raw is not None:
                # Queued behind the BEGIN on the same thread, so it runs after it; a no-op if none ran.
                await raw.rollback()
        except Exception:
            log.warning("could not roll back a transaction abandoned as it began", exc_info=True)
        finally:
            self._trxlock.release()


class _CancelSafeConnectionWrapper(ConnectionWrapper[aiosqlite.Connection]):
    """tortoise's lock around one statement, released if connecting fails or is cancelled."""

    async def __aenter__(self) -> aiosqlite.Connection:
        await self._lock.acquire()
        self.connection = self.client._connection  # as in the transaction context above
        try:
            await self.ensure_connection()
        except (Exception, asyncio.CancelledError):
            self._lock.release()
            raise
        return self.connection


async def _close_quietly(connection: aiosqlite.Connection) -> None:
    try:
        await connection.close()
    except Exception:
        log.warning("could not close a connection abandoned during its set-up", exc_info=True)


class InlineReadSqliteClient(SqliteClient):
    def __init__(self, file_path: str, **kwargs: Any) -> None:
        super().__init__(file_path, **kwargs)
        self._reader: sqlite3.Connection | None = None
        self._reader_generation = 0  # connections opened so far (see data_version)
        self._writer: sqlite3.Connection | None = None
        self._deadline = 0.0
        self._interrupted = False
        # (statement text, parameters) -> when to try it inline again
        self._slow: OrderedDict[tuple[str, tuple[Any, ...]], float] = OrderedDict()

    async def create_connection(self, with_db: bool) -> None:
        try:
            await super().create_connection(with_db)
        except (Exception, asyncio.CancelledError):
            # tortoise keeps the connection before it runs the PRAGMAs: stopped in between, the next caller
            # would use it as it is, for good. Dropped, the next caller connects again.
            half, self._connection = self._connection, None
            if half is not None:
                in_background(_close_quietly(half), "sqlite-half-open-connection")
            raise
        if self._reader is None and self.filename != ":memory:":
            reader = sqlite3.connect(self.filename, isolation_level=None)
            reader.execute("PRAGMA query_only = ON")
            reader.execute("PRAGMA busy_timeout = 0")  # never wait on a lock in the event loop: fall back
            reader.set_progress_handler(self._over_budget, _PROGRESS_STEPS)
            self._reader = reader
            self._reader_generation += 1
        if self._writer is None and self.filename != ":memory:":
            writer = sqlite3.connect(self.filename, isolation_level=None)
            for pragma, value in self.pragmas.items():  # foreign keys and the like, as tortoise's connection has
                writer.execute(f"PRAGMA {pragma}={value}")
            writer.execute("PRAGMA busy_timeout = 0")
            writer.execute("PRAGMA wal_autocheckpoint = 0")
            writer.set_progress_handler(self._over_budget, _PROGRESS_STEPS)
            (journal,) = writer.execute("PRAGMA journal_mode").fetchone()
            (synchronous,) = writer.execute("PRAGMA synchronous").fetchone()
            if str(journal).lower() == "wal" and int(synchronous) <= 1:  # OFF or NORMAL: no fsync per commit
                self._writer = writer
            else:
                writer.close()

    def _in_transaction(self) -> TransactionContext:
        return _CancelSafeTransactionContext(SqliteTransactionWrapper(self), self._lock)

    def acquire_connection(self) -> ConnectionWrapper[aiosqlite.Connection]:
        return _CancelSafeConnectionWrapper(self._lock, self)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        await super().close()

    def _over_budget(self) -> int:
        if time.thread_time() > self._deadline:
            self._interrupted = True
            return 1
        return 0

    def data_version(self) -> tuple[int, int] | None:
        """A value that changes whenever a connection commits to the database: any connection of any
        process, this one's included, since the read connection it is asked of never writes (SQLite's
        `PRAGMA data_version`, about 2 µs). Read it before the data it vouches for: a commit in between
        then makes the data newer than the value, never older. None without a read connection (`:memory:`).

        SQLite's number is only comparable on one connection, so the value pairs it with the read
        connection's generation: a client closed and connected again never repeats an earlier value.
        """
        if self._reader is None:
            return None
        self._deadline = time.thread_time() + INLINE_BUDGET_SECONDS  # the progress handler compares with it
        try:
            (version,) = self._reader.execute("PRAGMA data_version").fetchone()
        except sqlite3.Error:
            return None
        return self._reader_generation, int(version)

    def _known_slow(self, query: str, values: list[Any] | None) -> bool:
        if not self._slow:  # the usual case: nothing to look up, no key to build
            return False
        key = _statement_key(query, values)
        retry_at = self._slow.get(key) if key is not None else None
        if key is None or retry_at is None:
            return False
        if time.monotonic() >= retry_at:
            del self._slow[key]
            return False
        self._slow.move_to_end(key)
        return True

    def _remember_slow(self, query: str, values: list[Any] | None) -> None:
        key = _statement_key(query, values)
        if key is None:
            return
        self._slow[key] = time.monotonic() + SLOW_SQL_RETRY_SECONDS
        self._slow.move_to_end(key)
        while len(self._slow) > SLOW_SQL_MEMORY:
            self._slow.popitem(last=False)

    def _read_inline(self, query: str, values: list[Any] | None) -> list[dict[str, Any]]:
        if self._reader is None or not query.lstrip()[:6].upper() == "SELECT" or self._known_slow(query, values):
            raise _OverBudget
        collecting = gc.isenabled()
        gc.disable()
        self._deadline = time.thread_time() + INLINE_BUDGET_SECONDS
        self._interrupted = False
        try:
            cursor = self._reader.execute(query, values or ())
            rows = cursor.fetchall()
        except sqlite3.OperationalError as exc:  # interrupted, busy, or refused as a write: the usual path
            if self._interrupted:
                self._remember_slow(query, values)
            raise _OverBudget from exc
        finally:
            if collecting:
                gc.enable()
        self.log.debug("%s: %s", query, values)  # as tortoise logs every statement; once, if answered here
        # Dicts, not sqlite3.Row: tortoise reads every row by column name (`dict(row)`, `row[name]`),
        # and a Row finds a name by comparing it, case-insensitively, with each column in turn: 20 job
        # rows of 16 columns took 82 µs fetched and read as Rows, 67 µs as dicts (B3).
        names = [column[0] for column in cursor.description or ()]
        return [dict(zip(names, row, strict=True)) for row in rows]

    def _insert_inline(self, query: str, values: list[Any]) -> _Inserted:
        """Run an insert on the autocommit connection, its RETURNING rows (if any) fetched, so that it has
        committed; _OverBudget when the write lock is taken or the budget ran out (nothing written: the
        interrupted statement is rolled back with its autocommit transaction)."""
        self._interrupted = False
        if self._writer is None:
            raise _OverBudget
        collecting = gc.isenabled()
        gc.disable()
        self._deadline = time.thread_time() + INLINE_BUDGET_SECONDS
        cursor = self._writer.cursor()
        try:
            cursor.execute(query, values)
            rows = cursor.fetchall()  # the statement runs to its end, and commits, only once its rows are read
        except sqlite3.OperationalError as exc:  # busy (the write lock is taken) or interrupted
            # Not remembered as slow: an insert's values (a token, a time) never come again.
            raise _OverBudget from exc
        finally:
            cursor.close()
            if collecting:
                gc.enable()
        self.log.debug("%s: %s", query, values)
        names = [column[0] for column in cursor.description or ()]
        return _Inserted(cursor.lastrowid or 0, [dict(zip(names, row, strict=True)) for row in rows])

    async def _insert(self, query: str, values: list[Any]) -> _Inserted | None:
        """`_insert_inline`, tried again on the next turns of the event loop while the write lock is taken; None
        when it is not for the inline path (taken too long, over budget, or not in WAL mode)."""
        if self._writer is None:
            return None
        for attempt in range(1, INLINE_WRITE_ATTEMPTS + 1):
            try:
                return self._insert_inline(query, values)
            except _OverBudget:
                if self._interrupted or attempt == INLINE_WRITE_ATTEMPTS:
                    return None
                await asyncio.sleep(0)  # the write lock is taken: it is brief
        return None

    @translate_exceptions
    async def execute_insert(self, query: str, values: list[Any]) -> int:
        inserted = await self._insert(query, values)
        if inserted is not None:
            return inserted.row_id
        row_id: int = await super().execute_insert(query, values)
        return row_id

    @translate_exceptions
    async def execute_query(self, query: str, values: list[Any] | None = None) -> tuple[int, Sequence[dict[str, Any]]]:
        try:
            rows = self._read_inline(query.replace("\x00", "'||CHAR(0)||'"), values)
        except _OverBudget:
            answer: tuple[int, Sequence[dict[str, Any]]] = await super().execute_query(query, values)
            return answer
        return len(rows), rows

    @translate_exceptions
    async def execute_query_dict(self, query: str, values: list[Any] | None = None) -> list[dict[str, Any]]:
        if query.lstrip()[:6].upper() == "INSERT":  # INSERT ... RETURNING: a write, on the autocommit connection
            inserted = await self._insert(query, values or [])
            if inserted is not None:
                return inserted.rows
        else:
            try:
                return self._read_inline(query.replace("\x00", "'||CHAR(0)||'"), values)
            except _OverBudget:
                pass
        result: list[dict[str, Any]] = await super().execute_query_dict(query, values)
        return result


client_class = InlineReadSqliteClient
