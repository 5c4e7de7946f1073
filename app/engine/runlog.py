"""What a run says while it goes: `ctx.log` lines and `ctx.progress` reports, kept with the run and streamed live.

A handler's lines are numbered from 1 (`seq`) and buffered; every RUN_LOG_FLUSH_SECONDS the buffer is written in one
INSERT (the buffers of every run flushing at that moment in one transaction: app.engine.groupcommit) and then
published on LOG_CHANNEL, where each API instance's LogFeed (app.engine.logfeed) hands them to its followers. A
run that logs nothing and reports no progress writes nothing here.

A run keeps its first RUN_LOG_MAX_LINES lines and RUN_LOG_MAX_BYTES of them; past either bound every further line is
dropped, counted, and one last line says how many lines and bytes went. Lines keep their order and their numbers
have no holes, so a follower that has seen line n knows that the next one it needs is n + 1.

The runner closes a run's log (the last flush) before it closes the run record: once a run is complete, every line
it kept is in the database.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from redis.exceptions import RedisError
from tortoise import connections
from tortoise.transactions import in_transaction

from app.engine import events
from app.engine.groupcommit import GroupCommit, per_loop
from app.platform import metrics
from app.platform.runtime import Runtime
from app.platform.timefmt import iso_ms

log = logging.getLogger(__name__)

LOG_CHANNEL = "jg:runlog"
LEVELS: dict[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
PROCESS_LEVELS = {**LEVELS, "none": logging.CRITICAL + 1}
# A progress report: done, total, note, when.
Progress = tuple[float, float | None, str | None, datetime]
# Rows per INSERT: 6 parameters each stays far below SQLite's and PostgreSQL's parameter limits.
INSERT_BATCH = 500
# A run's `run.progress` events are at most this often (status subscribers get a frame each).
PROGRESS_EVENT_SECONDS = 0.5
# A flush that failed (the database out for a moment) keeps its lines and is tried again this much later.
RETRY_SECONDS = 1.0
CLOSE_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class Line:
    """One log line of a run, as stored and as followers receive it."""

    seq: int
    at: datetime
    level: str
    message: str
    fields: dict[str, Any] | None

    def wire(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "at": iso_ms(self.at),
            "level": self.level,
            "message": self.message,
            "fields": self.fields,
        }

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> Line:
        fields = data.get("fields")
        return cls(
            seq=int(data["seq"]),
            at=datetime.fromisoformat(str(data["at"]).replace("Z", "+00:00")),
            level=str(data["level"]),
            message=str(data["message"]),
            fields=dict(fields) if isinstance(fields, dict) else None,
        )


@dataclass(frozen=True, slots=True)
class _Kept:
    """A line waiting to be written: its fields already as the JSON text stored and published."""

    seq: int
    at: datetime
    level: str
    message: str
    fields_json: str | None

    def wire_json(self) -> str:
        head = f'{{"seq":{self.seq},"at":"{iso_ms(self.at)}","level":"{self.level}"'
        return f'{head},"message":{json.dumps(self.message)},"fields":{self.fields_json or "null"}}}'


def _number(name: str, value: object) -> float | int:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value or value < 0:
        raise TypeError(f"progress {name} must be a number >= 0, got {value!r}")
    return value


class RunLog:
    """A run's `ctx.log` and `ctx.progress`. Its methods may be called from the handler's task and from threads the
    handler started (app.engine.threads); a line is stamped when it is logged, whenever it is written."""

    def __init__(self, rt: Runtime, *, job_id: str, run_id: int, process_log: logging.Logger | None = None) -> None:
        self._rt = rt
        self.job_id = job_id
        self.run_id = run_id
        settings = rt.settings
        self._max_lines = settings.run_log_max_lines
        self._max_bytes = settings.run_log_max_bytes
        self._flush_after = settings.run_log_flush_seconds
        self._process_log = process_log or logging.getLogger(f"jobs.{job_id}")
        self._process_level = PROCESS_LEVELS[settings.run_log_process_level]
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._pending: list[_Kept] = []
        self._progress: Progress | None = None  # the last report, until it is written
        self._unannounced: Progress | None = None  # written, its `run.progress` event not sent yet
        self._announced_at = -PROGRESS_EVENT_SECONDS
        self._seq = 0
        self._kept_bytes = 0
        self._dropped_lines = 0
        self._dropped_bytes = 0
        self._flusher: asyncio.Task[None] | None = None
        self._closed = False

    # The logging.Logger methods a handler calls: `ctx.log.info("fetched %d games", n, source=url)`.
    def debug(self, message: str, *args: object, exc_info: bool = False, **fields: Any) -> None:
        self.log("debug", message, *args, exc_info=exc_info, **fields)

    def info(self, message: str, *args: object, exc_info: bool = False, **fields: Any) -> None:
        self.log("info", message, *args, exc_info=exc_info, **fields)

    def warning(self, message: str, *args: object, exc_info: bool = False, **fields: Any) -> None:
        self.log("warning", message, *args, exc_info=exc_info, **fields)

    def error(self, message: str, *args: object, exc_info: bool = False, **fields: Any) -> None:
        self.log("error", message, *args, exc_info=exc_info, **fields)

    def exception(self, message: str, *args: object, **fields: Any) -> None:
        """`error` with the exception being handled appended, as logging's `exception`."""
        self.log("error", message, *args, exc_info=True, **fields)

    def log(self, level: str, message: str, *args: object, exc_info: bool = False, **fields: Any) -> None:
        """One line at `level` (debug, info, warning, error): `message % args`, with `fields` (JSON values; one JSON
        cannot say is kept as its str()) beside it. Lines at RUN_LOG_PROCESS_LEVEL or above go to the process log
        too."""
        number = LEVELS.get(level)
        if number is None:
            raise ValueError(f"log level must be one of {', '.join(LEVELS)}, got {level!r}")
        text = str(message) % args if args else str(message)
        if exc_info:
            text = f"{text}\n{traceback.format_exc().rstrip()}"
        if number >= self._process_level:
            self._process_log.log(number, "%s", text, extra={"run_fields": fields} if fields else None)
        fields_json = json.dumps(fields, default=str, separators=(",", ":")) if fields else None
        line = (self._rt.now(), level, text, fields_json)
        if threading.get_ident() == self._loop_thread:
            self._keep(*line)
        else:
            self._loop.call_soon_threadsafe(self._keep, *line)

    def progress(self, done: float, total: float | None = None, note: str | None = None) -> None:
        """How far the run is: `done` of `total` (None: unknown), with an optional note. Only the latest report
        is kept: reports between two flushes cost nothing more than one."""
        report = (
            _number("done", done),
            None if total is None else _number("total", total),
            None if note is None else str(note)[:500],
            self._rt.now(),
        )
        if threading.get_ident() == self._loop_thread:
            self._report(report)
        else:
            self._loop.call_soon_threadsafe(self._report, report)

    @property
    def dropped(self) -> tuple[int, int]:
        """(lines, bytes) dropped past the bounds so far."""
        return self._dropped_lines, self._dropped_bytes

    def _keep(self, at: datetime, level: str, text: str, fields_json: str | None) -> None:
        if self._closed:
            return  # a thread the handler left behind, still logging after its run ended
        size = len(text.encode()) + (len(fields_json) if fields_json else 0)
        if self._dropped_lines or self._seq >= self._max_lines or self._kept_bytes + size > self._max_bytes:
            # Once one line is dropped, every later one is: the log kept is the run's beginning, without holes.
            self._dropped_lines += 1
            self._dropped_bytes += size
            return
        self._seq += 1
        self._kept_bytes += size
        self._pending.append(_Kept(self._seq, at, level, text, fields_json))
        if self._flusher is None:
            self._schedule()

    def _report(self, report: Progress) -> None:
        if self._closed:
            return
        self._progress = report
        self._schedule()

    def _schedule(self, delay: float | None = None) -> None:
        if self._flusher is None:
            self._flusher = self._loop.create_task(self._flush_later(self._flush_after if delay is None else delay))

    async def _flush_later(self, delay: float) -> None:
        await asyncio.sleep(delay)
        self._flusher = None
        if not await self._flush():
            self._schedule(RETRY_SECONDS)

    async def _flush(self) -> bool:
        """Write and publish what is pending; False (and everything kept for the next try) when it cannot."""
        lines, progress = self._pending, self._progress
        if not lines and progress is None:
            await self._announce(None)
            return True
        self._pending, self._progress = [], None
        metrics.RUN_LOG_LINES.labels("kept").inc(len(lines))
        try:
            await _writes().submit(_Batch(self.run_id, lines, progress))
        except Exception:
            log.warning("could not write %d log lines of run %s; trying again", len(lines), self.run_id, exc_info=True)
            self._pending = lines + self._pending
            if self._progress is None:
                self._progress = progress
            return False
        await _publish(self._rt, self.run_id, lines)
        await self._announce(progress)
        return True

    async def _announce(self, progress: Progress | None) -> None:
        """The `run.progress` event of the latest report, at most once per PROGRESS_EVENT_SECONDS: every status
        subscriber of the job gets a frame per event. A report held back goes with a later flush. A closed run
        announces nothing (its `run.finished` event follows)."""
        report = progress or self._unannounced
        if report is None or self._closed:
            self._unannounced = None
            return
        wait = self._announced_at + PROGRESS_EVENT_SECONDS - time.monotonic()
        if wait > 0:
            self._unannounced = report
            self._schedule(wait)
            return
        self._unannounced = None
        self._announced_at = time.monotonic()
        await events.publish(
            self._rt.redis, events.RUN_PROGRESS, self.job_id, runId=self.run_id, progress=progress_wire(report)
        )

    async def close(self) -> None:
        """The last flush, with the line saying what was dropped: called once the handler has ended, before the
        run record is closed. A log that cannot be written after a few tries is given up (the run's outcome
        matters more than its lines)."""
        if self._closed:
            return
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        if self._dropped_lines:
            self._seq += 1
            text = (
                f"log truncated: {self._dropped_lines} more lines ({self._dropped_bytes} bytes) were dropped; a run "
                f"keeps its first {self._max_lines} lines and {self._max_bytes} bytes (RUN_LOG_MAX_LINES, "
                "RUN_LOG_MAX_BYTES)"
            )
            fields = json.dumps({"droppedLines": self._dropped_lines, "droppedBytes": self._dropped_bytes})
            self._pending.append(_Kept(self._seq, self._rt.now(), "warning", text, fields))
            metrics.RUN_LOG_LINES.labels("dropped").inc(self._dropped_lines)
        self._closed = True
        for attempt in range(1, CLOSE_ATTEMPTS + 1):
            if await self._flush():
                return
            if attempt < CLOSE_ATTEMPTS:
                await asyncio.sleep(RETRY_SECONDS * attempt)
        log.error("gave up writing the last %d log lines of run %s", len(self._pending), self.run_id)


@dataclass(frozen=True, slots=True)
class _Batch:
    run_id: int
    lines: list[_Kept]
    progress: Progress | None


async def _write_many(batches: list[_Batch]) -> list[None]:
    """Every batch's lines in as few INSERTs as their number allows, and each last progress report, in one
    transaction. A line already written (a retried flush whose commit went through) is left as it is."""
    conn = connections.get("default")
    postgres = conn.capabilities.dialect == "postgres"
    rows = [(b.run_id, line) for b in batches for line in b.lines]
    async with in_transaction() as tx:
        for start in range(0, len(rows), INSERT_BATCH):
            chunk = rows[start : start + INSERT_BATCH]
            values: list[object] = []
            marks: list[str] = []
            for run_id, line in chunk:
                first = len(values) + 1
                marks.append("(" + ", ".join(f"${first + i}" if postgres else "?" for i in range(6)) + ")")
                values += [run_id, line.seq, line.at, line.level, line.message, line.fields_json]
            await tx.execute_query(
                "INSERT INTO run_log (run_id, seq, at, level, message, extra) "
                f"VALUES {', '.join(marks)} ON CONFLICT DO NOTHING",
                values,
            )
        sql = (
            "UPDATE job_run SET progress = $1 WHERE id = $2 AND completed_at IS NULL"
            if postgres
            else "UPDATE job_run SET progress = ? WHERE id = ? AND completed_at IS NULL"
        )
        for b in batches:
            if b.progress is not None:
                await tx.execute_query(sql, [json.dumps(progress_wire(b.progress), separators=(",", ":")), b.run_id])
    metrics.RUN_LOG_WRITES.inc()
    return [None] * len(batches)


_writes = per_loop(lambda: GroupCommit(_write_many, "run-log"))


def progress_wire(progress: Progress) -> dict[str, Any]:
    done, total, note, at = progress
    return {"done": done, "total": total, "note": note, "at": iso_ms(at)}


async def _publish(rt: Runtime, run_id: int, lines: list[_Kept]) -> None:
    """Best effort, like every event: a follower that misses a message reads the lines from the database."""
    if not lines:
        return
    wire = ",".join(line.wire_json() for line in lines)
    try:
        await rt.redis.publish(LOG_CHANNEL, f'{{"runId":{run_id},"lines":[{wire}]}}')
    except RedisError:
        log.warning("could not publish the log of run %s", run_id, exc_info=True)


def end_message(run_id: int) -> str:
    """The message on LOG_CHANNEL saying that a run ended: its log is complete in the database."""
    return f'{{"runId":{run_id},"end":true}}'
