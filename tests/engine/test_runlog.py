"""A run's log writer (app.engine.runlog) against the real database: what a logger's callers pass, values a
database refuses, a close that waits for the write under way, and progress events that never hold lines back."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest

from app.data.runs import Run, RunLogLine
from app.engine import LOG_CHANNEL, LogFeed, RunLog
from app.engine.outcomes import ERROR_TYPE_CHARS, of_error, of_return
from app.engine.runlog import end_message
from app.platform.runtime import Runtime
from app.platform.timefmt import utcnow
from app.runs import service as runs_service

pytestmark = pytest.mark.postgres


async def lines_of(run_id: int) -> list[tuple[Any, ...]]:
    return list(await RunLogLine.filter(run_id=run_id).order_by("seq").values_list("seq", "level", "message", "extra"))


async def test_what_code_written_for_a_logger_passes_is_kept(orm: Runtime) -> None:
    log = RunLog(orm, job_id="j", run_id=1)
    log.log(logging.INFO, "by number %s", 1)
    log.log(45, "between error and critical")
    log.critical("critical")
    log.log("WARNING", "by name, upper case")
    log.info("extra and fields", extra={"a": 1}, b=2)
    log.info("%d and %d", 1)  # the arguments do not fit: kept, not raised
    try:
        raise KeyError("gone")
    except KeyError as exc:
        caught = exc
    log.error("with the exception object", exc_info=caught)
    log.warning("no exception being handled", exc_info=True)
    with pytest.raises(ValueError, match="log level must be one of"):
        log.log("loud", "x")
    await log.close()
    lines = await lines_of(1)
    assert [line[:2] for line in lines] == [
        (1, "info"),
        (2, "error"),
        (3, "critical"),
        (4, "warning"),
        (5, "info"),
        (6, "info"),
        (7, "error"),
        (8, "warning"),
    ]
    assert lines[0][2] == "by number 1"
    assert lines[4][3] == {"a": 1, "b": 2}
    assert lines[5][2].startswith("%d and %d (1,) (the arguments did not fit the message")
    assert lines[6][2].startswith("with the exception object\nTraceback (most recent call last):")
    assert lines[6][2].endswith("KeyError: 'gone'")
    assert lines[7][2] == "no exception being handled"


async def test_values_a_database_refuses_are_stored_as_text(orm: Runtime) -> None:
    """PostgreSQL refuses NaN, Infinity and NUL characters in JSON and text: one such line must not lose the log."""
    log = RunLog(orm, job_id="j", run_id=2)
    log.info("nul \x00 in the message", ratio=float("nan"), big=float("inf"), text="a\x00b", nested={"k\x00": [1.5]})
    log.info("the next line")
    for bad in (float("nan"), float("inf"), -1, True, "3"):
        with pytest.raises(TypeError, match="progress done must be a finite number >= 0"):
            log.progress(bad)  # type: ignore[arg-type]
    await log.close()
    lines = await lines_of(2)
    assert [line[2] for line in lines] == ["nul \ufffd in the message", "the next line"]
    assert lines[0][3] == {"ratio": "nan", "big": "inf", "text": "a\ufffdb", "nested": {"k\ufffd": [1.5]}}
    # The same for what a handler returns or raises.
    outcome = of_return({"summary": "a\x00b", "x": "\x00"}, orm.settings)
    assert (outcome.result, outcome.details, outcome.output) == (
        "success",
        "a\ufffdb",
        {"summary": "a\ufffdb", "x": "\ufffd"},
    )
    assert of_return("one\x00line", orm.settings).details == "one\ufffdline"
    assert of_return({"x": float("nan")}, orm.settings).result == "error"  # not JSON: refused, saying so
    long_name = type("E" * 300, (Exception,), {})
    failed = of_error(long_name("boom\x00"))
    assert failed.details == "boom\ufffd" and failed.error_type is not None
    assert len(failed.error_type) == ERROR_TYPE_CHARS


@asynccontextmanager
async def write_lock_held(orm: Runtime) -> AsyncIterator[None]:
    """Another connection holds the lock that run_log's INSERT needs, until the block ends."""
    url = orm.settings.database_url
    if url.startswith("sqlite"):
        conn = sqlite3.connect(url.removeprefix("sqlite://"), isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            conn.execute("ROLLBACK")
            conn.close()
        return
    pg = await asyncpg.connect(url.replace("postgres://", "postgresql://", 1))
    tx = pg.transaction()
    await tx.start()
    await pg.execute("LOCK TABLE run_log IN EXCLUSIVE MODE")
    try:
        yield
    finally:
        await tx.rollback()
        await pg.close()


async def test_close_waits_for_the_write_under_way(orm: Runtime) -> None:
    """Once close() returns, every line is stored: the runner closes the run next, and a follower that sees it
    closed reads its lines and stops."""
    log = RunLog(orm, job_id="j", run_id=3)
    async with write_lock_held(orm):
        log.info("written while the table is locked")
        await asyncio.sleep(orm.settings.run_log_flush_seconds * 4)  # the flush has begun, and waits
        closing = asyncio.create_task(log.close())
        await asyncio.sleep(0.3)
        assert not closing.done()  # waiting for the write under way, not returning without it
    await asyncio.wait_for(closing, 10)
    assert [line[2] for line in await lines_of(3)] == ["written while the table is locked"]


@pytest.mark.serial
async def test_a_held_back_progress_event_never_holds_lines_back(orm: Runtime) -> None:
    run = await Run.create(job_id="j", token="t", triggered_by="user:1", started_at=utcnow())
    log = RunLog(orm, job_id="j", run_id=run.id)
    log.progress(1, 3)
    await asyncio.sleep(0.2)  # written and announced: the next announcement waits until 0.5 s after this one
    log.progress(2, 3)
    log.info("a line logged now")
    logged = time.monotonic()
    while not await RunLogLine.filter(run_id=run.id).exists():  # noqa: ASYNC110 - polling the database
        await asyncio.sleep(0.005)
    waited = time.monotonic() - logged
    # RUN_LOG_FLUSH_SECONDS (0.05) later, give or take the write: not when the progress event may go (0.3 s on).
    assert waited < 0.2, waited
    await log.close()
    await run.refresh_from_db()
    assert run.progress is not None and run.progress["done"] == 2


async def test_lines_from_a_thread_after_the_run_closed_are_dropped_quietly(orm: Runtime) -> None:
    log = RunLog(orm, job_id="j", run_id=4)
    log.info("before")
    await log.close()
    await asyncio.to_thread(log.info, "after the close, from a thread")
    log.info("after the close")
    await asyncio.sleep(orm.settings.run_log_flush_seconds * 3)
    assert [line[2] for line in await lines_of(4)] == ["before"]
    assert json.loads(json.dumps(log.dropped)) == [0, 0]  # not past the bounds: gone with the run


async def test_a_follower_misses_nothing_when_the_feed_loses_redis(orm: Runtime) -> None:
    """Lines published while the feed's subscription is down never reach it: the follower reads them from the
    database once the feed is back, each once and in order, and stops when the run ends."""
    run = await Run.create(job_id="j", token="t", triggered_by="user:1", started_at=utcnow())
    feed = LogFeed(orm.redis)
    feed.start()
    log = RunLog(orm, job_id="j", run_id=run.id)
    follow = runs_service.follow_log(feed, run_id=run.id, after=0)
    try:
        await asyncio.wait_for(feed.connected.wait(), 5)
        seen: list[int] = []

        async def until(count: int) -> None:
            while len(seen) < count:
                seen.extend(line.seq for line in await anext(follow))

        for i in range(1, 4):
            log.info("before %d", i)
        await asyncio.wait_for(until(3), 5)
        await orm.redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")  # the feed's subscription goes
        for i in range(4, 7):
            log.info("while the feed is down %d", i)
        # Within the feed's retry delay (1 s) and a bit: the feed says it lost messages, not the follower's 5 s poll.
        await asyncio.wait_for(until(6), 3.5)
        log.info("after")
        await asyncio.wait_for(until(7), 5)
        assert seen == [1, 2, 3, 4, 5, 6, 7]
        await log.close()
        await Run.filter(id=run.id).update(completed_at=utcnow(), result="success")
        await orm.redis.publish(LOG_CHANNEL, end_message(run.id))
        with pytest.raises(StopAsyncIteration):  # the run ended: the stream ends
            await asyncio.wait_for(anext(follow), 5)
    finally:
        await follow.aclose()
        await feed.stop()
