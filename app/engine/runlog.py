"""What a run says while it goes: `ctx.log` lines and `ctx.progress` reports, kept with the run and streamed live.

A handler's lines are numbered from 1 (`seq`) and buffered; every RUN_LOG_FLUSH_SECONDS the buffer is written in one
INSERT (the buffers of every run flushing at that moment together: app.engine.groupcommit) and then
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
import contextlib
import json
import logging
import math
import sys
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
    "critical": logging.CRITICAL,
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
FLUSH_ATTEMPTS = 3


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
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise TypeError(f"progress {name} must be a finite number >= 0, got {value!r}")
    return value


def storable(text: str) -> str:
    """Text both databases store: PostgreSQL refuses NUL characters in text and JSON."""
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


def _clean(value: Any) -> Any:
    """A JSON value as both databases store it: non-finite numbers as their text, NUL characters replaced."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str):
        return storable(value)
    if isinstance(value, dict):
        return {storable(str(k)): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


# One encoder for every line: json.dumps builds a new one per call when given options.
_encode = json.JSONEncoder(default=str, separators=(",", ":"), allow_nan=False).encode


def json_text(value: Any) -> str:
    """`value` as JSON both databases store (a value JSON cannot say is kept as its str())."""
    try:
        text = _encode(value)
    except ValueError:
        text = json.dumps(_clean(json.loads(json.dumps(value, default=str))), separators=(",", ":"))
    if "\\u0000" in text:
        text = json.dumps(_clean(json.loads(text)), separators=(",", ":"))
    return text


def _level_name(level: str | int) -> str | None:
    if isinstance(level, int) and not isinstance(level, bool):
        # A logging level number: the nearest of ours at or below it.
        return next((name for name, number in reversed(LEVELS.items()) if level >= number), "debug")
    return level.lower() if isinstance(level, str) and level.lower() in LEVELS else None


def _exception_text(exc_info: object) -> str | None:
    if exc_info is None or exc_info is False:
        return None
    if isinstance(exc_info, BaseException):
        lines = traceback.format_exception(exc_info)
    elif isinstance(exc_info, tuple) and len(exc_info) == 3:
        lines = traceback.format_exception(*exc_info)
    elif sys.exc_info()[0] is not None:
        lines = traceback.format_exception(*sys.exc_info())
    else:
        return None
    return "".join(lines).rstrip()


class RunLog:
    """A run's `ctx.log` and `ctx.progress`. Its methods may be called from the handler's task and from threads the
    handler started (app.engine.threads); a line is stamped when it is logged, whenever it is written.

    `ctx.log` answers what code written for a `logging.Logger` calls: `debug`…`critical`, `exception`, `log` with a
    level name or number, `%` arguments, `exc_info` (True, an exception, or a sys.exc_info() tuple), `stack_info`,
    `extra` (merged into the fields). A message its arguments do not fit is kept as it is, with them beside it."""

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
        self._failures = 0  # flushes failed in a row
        self._flusher: asyncio.Task[None] | None = None  # a timer: cleared before its flush begins
        self._announcer: asyncio.Task[None] | None = None
        self._writing = asyncio.Lock()  # one flush at a time; close() waits for the one under way
        self._closed = False

    # The logging.Logger methods a handler calls: `ctx.log.info("fetched %d games", n, source=url)`.
    def debug(self, message: object, *args: object, **fields: Any) -> None:
        self.log("debug", message, *args, **fields)

    def info(self, message: object, *args: object, **fields: Any) -> None:
        self.log("info", message, *args, **fields)

    def warning(self, message: object, *args: object, **fields: Any) -> None:
        self.log("warning", message, *args, **fields)

    def error(self, message: object, *args: object, **fields: Any) -> None:
        self.log("error", message, *args, **fields)

    def critical(self, message: object, *args: object, **fields: Any) -> None:
        self.log("critical", message, *args, **fields)

    def exception(self, message: object, *args: object, exc_info: object = True, **fields: Any) -> None:
        """`error` with the exception being handled appended, as logging's `exception`."""
        self.log("error", message, *args, exc_info=exc_info, **fields)

    def log(
        self,
        level: str | int,
        message: object,
        *args: object,
        exc_info: object = None,
        stack_info: bool = False,
        stacklevel: int = 1,  # noqa: ARG002 - a Logger's parameter, meaningless here
        extra: dict[str, Any] | None = None,
        **fields: Any,
    ) -> None:
        """One line at `level` (debug, info, warning, error, critical, or a logging level number): `message % args`,
        with `fields` (JSON values) beside it. Lines at RUN_LOG_PROCESS_LEVEL or above go to the process log too."""
        name = level if isinstance(level, str) and level in LEVELS else _level_name(level)
        if name is None:
            raise ValueError(f"log level must be one of {', '.join(LEVELS)} or a logging level number, got {level!r}")
        text = str(message)
        if args:
            try:
                text = text % args
            except (TypeError, ValueError, KeyError) as exc:
                text = f"{text} {args!r} (the arguments did not fit the message: {exc})"
        if exc_info is not None and exc_info is not False and (exception := _exception_text(exc_info)) is not None:
            text = f"{text}\n{exception}"
        if stack_info:
            text = f"{text}\nStack (most recent call last):\n{''.join(traceback.format_stack()[:-1]).rstrip()}"
        if extra:
            fields = {**extra, **fields}
        number = LEVELS[name]
        if number >= self._process_level:
            self._process_log.log(number, "%s", text, extra={"run_fields": fields} if fields else None)
        line = (self._rt.now(), name, storable(text), json_text(fields) if fields else None)
        if threading.get_ident() == self._loop_thread:
            self._keep(*line)
            return
        try:
            self._loop.call_soon_threadsafe(self._keep, *line)
        except RuntimeError:
            metrics.RUN_LOG_LINES.labels("dropped").inc()  # a thread left behind, logging after its loop closed

    def progress(self, done: float, total: float | None = None, note: str | None = None) -> None:
        """How far the run is: `done` of `total` (None: unknown), with an optional note. Only the latest report
        is kept: reports between two flushes cost nothing more than one."""
        report = (
            _number("done", done),
            None if total is None else _number("total", total),
            None if note is None else storable(str(note)[:500]),
            self._rt.now(),
        )
        if threading.get_ident() == self._loop_thread:
            self._report(report)
            return
        with contextlib.suppress(RuntimeError):  # its loop has closed: the run is long over
            self._loop.call_soon_threadsafe(self._report, report)

    @property
    def dropped(self) -> tuple[int, int]:
        """(lines, bytes) dropped past the bounds so far."""
        return self._dropped_lines, self._dropped_bytes

    def _keep(self, at: datetime, level: str, text: str, fields_json: str | None) -> None:
        if self._closed:
            metrics.RUN_LOG_LINES.labels("dropped").inc()  # a thread the handler left behind, logging after its run
            return
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
        async with self._writing:
            flushed = await self._flush()
        if not flushed and not self._closed:
            self._schedule(RETRY_SECONDS)

    async def _flush(self) -> bool:
        """Write and publish what is pending; False (and everything kept for the next try) when it cannot. After
        FLUSH_ATTEMPTS failures in a row what is pending is given up: the run's lines are worth less than its
        worker's memory and its outcome."""
        lines, progress = self._pending, self._progress
        if not lines and progress is None:
            return True
        self._pending, self._progress = [], None
        try:
            await _writes().submit(_Batch(self.run_id, lines, progress))
        except Exception:
            self._failures += 1
            if self._failures >= FLUSH_ATTEMPTS:
                log.error("gave up writing %d log lines of run %s", len(lines), self.run_id, exc_info=True)
                metrics.RUN_LOG_LINES.labels("dropped").inc(len(lines))
                self._failures = 0
                return True
            log.warning("could not write %d log lines of run %s; trying again", len(lines), self.run_id, exc_info=True)
            self._pending = lines + self._pending
            if self._progress is None:
                self._progress = progress
            return False
        self._failures = 0
        metrics.RUN_LOG_LINES.labels("kept").inc(len(lines))
        await _publish(self._rt, self.run_id, lines)
        if progress is not None:
            self._unannounced = progress
            await self._announce()
        return True

    async def _announce(self) -> None:
        """The `run.progress` event of the latest written report, at most once per PROGRESS_EVENT_SECONDS: every
        status subscriber of the job gets a frame per event. A report held back is announced by its own timer (the
        lines' flushes keep their pace). A closed run announces nothing: its `run.finished` event follows."""
        report = self._unannounced
        if report is None or self._closed:
            return
        wait = self._announced_at + PROGRESS_EVENT_SECONDS - time.monotonic()
        if wait > 0:
            if self._announcer is None:
                self._announcer = self._loop.create_task(self._announce_later(wait))
            return
        self._unannounced = None
        self._announced_at = time.monotonic()
        await events.publish(
            self._rt.redis, events.RUN_PROGRESS, self.job_id, runId=self.run_id, progress=progress_wire(report)
        )

    async def _announce_later(self, wait: float) -> None:
        await asyncio.sleep(wait)
        self._announcer = None
        await self._announce()

    async def close(self) -> None:
        """The last flush, with the line saying what was dropped: called once the handler has ended, before the
        run record is closed, and again by a shutdown that interrupted it (which finishes what it left). Waits for
        a flush under way: once it returns, every line the run kept is stored (or given up after a few tries)."""
        for timer in (self._flusher, self._announcer):
            if timer is not None:
                timer.cancel()
        self._flusher = self._announcer = None
        async with self._writing:
            if not self._closed:
                self._closed = True
                self._mark_truncation()
            for attempt in range(1, FLUSH_ATTEMPTS + 1):
                if await self._flush():
                    return
                if attempt < FLUSH_ATTEMPTS:
                    await asyncio.sleep(RETRY_SECONDS * attempt)

    def _mark_truncation(self) -> None:
        if not self._dropped_lines:
            return
        self._seq += 1
        text = (
            f"log truncated: {self._dropped_lines} more lines ({self._dropped_bytes} bytes) were dropped; a run "
            f"keeps its first {self._max_lines} lines and {self._max_bytes} bytes (RUN_LOG_MAX_LINES, "
            "RUN_LOG_MAX_BYTES)"
        )
        fields = json_text({"droppedLines": self._dropped_lines, "droppedBytes": self._dropped_bytes})
        self._pending.append(_Kept(self._seq, self._rt.now(), "warning", text, fields))
        metrics.RUN_LOG_LINES.labels("dropped").inc(self._dropped_lines)


@dataclass(frozen=True, slots=True)
class _Batch:
    run_id: int
    lines: list[_Kept]
    progress: Progress | None


async def _write_many(batches: list[_Batch]) -> list[None]:
    """Every batch's lines in as few INSERTs as their number allows, then each last progress report. Each INSERT
    is atomic on its own and needs no transaction around it: a line already written (a retried flush whose
    INSERT went through) is left as it is. Outside a transaction, SQLite's INSERT takes the inline autocommit
    writer (app.adapters.tortoise.sqlite: no thread hop) and PostgreSQL's is one round trip, not three."""
    conn = connections.get("default")
    postgres = conn.capabilities.dialect == "postgres"
    rows = [(b.run_id, line) for b in batches for line in b.lines]
    for start in range(0, len(rows), INSERT_BATCH):
        chunk = rows[start : start + INSERT_BATCH]
        values: list[object] = []
        marks: list[str] = []
        for run_id, line in chunk:
            first = len(values) + 1
            marks.append("(" + ", ".join(f"${first + i}" if postgres else "?" for i in range(6)) + ")")
            values += [run_id, line.seq, line.at, line.level, line.message, line.fields_json]
        await conn.execute_query_dict(
            "INSERT INTO run_log (run_id, seq, at, level, message, extra) "
            f"VALUES {', '.join(marks)} ON CONFLICT DO NOTHING",
            values,
        )
    reports = [(b.run_id, b.progress) for b in batches if b.progress is not None]
    if reports:
        sql = (
            "UPDATE job_run SET progress = $1 WHERE id = $2 AND completed_at IS NULL"
            if postgres
            else "UPDATE job_run SET progress = ? WHERE id = ? AND completed_at IS NULL"
        )
        async with in_transaction() as tx:
            for run_id, progress in reports:
                await tx.execute_query(sql, [json.dumps(progress_wire(progress), separators=(",", ":")), run_id])
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
