"""Runs: triggering a job now, the run logs, one run with what it said (output, progress, traceback) and its log
lines, read or followed live. How a run starts, runs and ends is the engine's (app.engine)."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict
from tortoise import connections
from tortoise.functions import Sum
from tortoise.queryset import QuerySet

from app import engine
from app.activity import service as activity_service
from app.data import jobs as jobs_table
from app.data.jobs import Job
from app.data.runs import Run, RunCount, RunLogLine
from app.data.skipped_fires import SkippedFire
from app.job_types import registry
from app.platform.errors import Conflict, Invalid, NotFound, Unavailable
from app.platform.pagination import Page, PageRequest, as_int, fetch_page, parse_instant
from app.platform.runtime import Runtime
from app.platform.validation import validated

JOB_LOGS_DEFAULT, JOB_LOGS_MAX = 50, 100
ALL_LOGS_DEFAULT, ALL_LOGS_MAX = 100, 200
SKIPPED_DEFAULT, SKIPPED_MAX = 50, 100
LOG_DEFAULT, LOG_MAX = 100, 1000
# A follower that hears nothing for this long reads the run again: a run whose worker was lost ends without a word
# on the log channel (the reaper closes it), and a message can be lost.
FOLLOW_CHECK_SECONDS = 5.0
MAX_RUN_ID = 2**63 - 1


@dataclass(frozen=True, slots=True)
class RunFilter:
    """What the log endpoints filter on, besides the job: all optional, combined with AND."""

    result: str | None = None  # success | error | running (no result yet)
    triggered_by: str | None = None
    since: datetime | str | None = None  # started at or after
    until: datetime | str | None = None  # started before

    @property
    def empty(self) -> bool:
        return self == NO_FILTER

    def apply(self, query: QuerySet[Run]) -> QuerySet[Run]:
        if self.result is not None:
            if self.result not in RESULTS:
                raise Invalid(f"result must be one of: {', '.join(RESULTS)}", code="invalid_result")
            query = query.filter(result__isnull=True) if self.result == "running" else query.filter(result=self.result)
        if self.triggered_by is not None:
            query = query.filter(triggered_by=self.triggered_by)
        since, until = parse_instant(self.since, "since"), parse_instant(self.until, "until")
        if since is not None:
            query = query.filter(started_at__gte=since)
        if until is not None:
            query = query.filter(started_at__lt=until)
        return query


RESULTS = ("success", "error", "running")
NO_FILTER = RunFilter()


async def list_for_job(
    *,
    job_id: str,
    limit: int | str | None,
    offset: int | str | None,
    before: int | str | None = None,
    filters: RunFilter = NO_FILTER,
) -> Page[Run]:
    await jobs_table.get_or_raise(job_id=job_id)
    page = PageRequest.build(limit, offset, default=JOB_LOGS_DEFAULT, maximum=JOB_LOGS_MAX, before=before)
    query = filters.apply(Run.filter(job_id=job_id))
    # Unfiltered, the total is the database's own count; filtered, a COUNT over what matches.
    return await fetch_page(query, page, total=(lambda: run_totals([job_id])) if filters.empty else None)


async def list_all(
    *,
    limit: int | str | None,
    offset: int | str | None,
    before: int | str | None = None,
    filters: RunFilter = NO_FILTER,
) -> Page[Run]:
    page = PageRequest.build(limit, offset, default=ALL_LOGS_DEFAULT, maximum=ALL_LOGS_MAX, before=before)
    query = filters.apply(Run.all())
    return await fetch_page(query, page, total=(lambda: run_totals(None)) if filters.empty else None)


async def list_skipped(
    *, job_id: str, limit: int | str | None, offset: int | str | None, before: int | str | None = None
) -> Page[SkippedFire]:
    """The job's scheduled fires that did not run, with their reason, newest first; `before` an id (keyset)."""
    await jobs_table.get_or_raise(job_id=job_id)
    page = PageRequest.build(limit, offset, default=SKIPPED_DEFAULT, maximum=SKIPPED_MAX, before=before)
    return await fetch_page(SkippedFire.filter(job_id=job_id), page)


async def run_totals(job_ids: list[str] | None) -> int:
    """How many runs these jobs (None: all jobs) have, from the counters the database keeps on job_run:
    a COUNT(*) over a million runs takes tens of milliseconds, these take one indexed read."""
    counts = RunCount.all() if job_ids is None else RunCount.filter(job_id__in=job_ids)
    totals = await counts.annotate(n=Sum("runs")).first().values_list("n", flat=True)
    return int(totals or 0)  # type: ignore[arg-type]


def page_request(*, limit: int | str | None, offset: int | str | None, before: int | str | None = None) -> PageRequest:
    """A job's log page bounds, checked (Invalid) before any read."""
    return PageRequest.build(limit, offset, default=JOB_LOGS_DEFAULT, maximum=JOB_LOGS_MAX, before=before)


async def pages_for_jobs(
    *, job_ids: list[str], limit: int | str | None, offset: int | str | None, before: int | str | None = None
) -> dict[str, Page[Run]]:
    """The same page of runs for many jobs in a constant number of queries (GraphQL's `Job.logs`); `before` an id
    (keyset), as the log endpoints'."""
    page = page_request(limit=limit, offset=offset, before=before)
    if not job_ids:
        return {}
    conn = connections.get("default")
    values: list[object] = [*job_ids]
    keyset = ""
    if page.before is not None:
        values.append(page.before)
        keyset = " AND id < {}"
    values += [page.offset, page.offset + page.limit + 1]  # one more than the page: is there a next one?
    marks = ["?"] * len(values)
    if conn.capabilities.dialect != "sqlite":
        marks = [f"${i}" for i in range(1, len(values) + 1)]
    where = f"job_id IN ({', '.join(marks[: len(job_ids)])})" + keyset.format(*marks[len(job_ids) : -2])
    # A window per job keeps each job's slice in the database, however many runs it has.
    sql = (
        "SELECT id FROM (SELECT id, ROW_NUMBER() OVER (PARTITION BY job_id ORDER BY id DESC) AS rn "
        f"FROM job_run WHERE {where}) ranked WHERE rn > {marks[-2]} AND rn <= {marks[-1]}"
    )
    rows = await conn.execute_query_dict(sql, values)
    runs = await Run.filter(id__in=[r["id"] for r in rows]).order_by("-id")
    counts = await RunCount.filter(job_id__in=job_ids).values_list("job_id", "runs")
    totals = {str(job_id): int(n) for job_id, n in counts}
    grouped: dict[str, list[Run]] = {j: [] for j in job_ids}
    for run in runs:
        grouped[run.job_id].append(run)
    return {
        j: Page(
            items=grouped[j][: page.limit],
            total=totals.get(j, 0),
            limit=page.limit,
            offset=page.offset,
            more=len(grouped[j]) > page.limit,
        )
        for j in job_ids
    }


async def trigger(rt: Runtime, *, job_id: str, actor: str, body: object = None) -> str:
    """Run the job now, whatever its schedule or enabled flag: its run's token. Conflict while it is running,
    Unavailable while Redis cannot take it. Audited as `jobs.trigger`.

    `body` None is the spec's trigger; `{"payload": {...}}` runs with that payload instead of the job's,
    validated by the job type's schema (and kept on the run record, as every run's payload is)."""
    job = await jobs_table.get_or_raise(job_id=job_id)
    payload = _trigger_payload(rt, job, body)
    try:
        token = await engine.trigger(rt, job, actor=actor, payload=payload)
    except engine.QueueUnavailable as exc:
        raise Unavailable(str(exc)) from exc
    if token is None:
        raise Conflict("Job is already running", code="already_running")
    details: dict[str, object] = {"enabled": job.enabled}
    if payload is not None:
        details["payload"] = payload
    await activity_service.record(event="jobs.trigger", actor=actor, job_id=job.id, details=details)
    return token


def _trigger_payload(rt: Runtime, job: Job, body: object) -> dict[str, Any] | None:
    if body is None:
        return None
    trigger = validated(TriggerBody, body, what="trigger")
    if trigger.payload is None:
        return None
    return registry.validate_payload(registry.get(job.type), trigger.payload, rt.settings)


class TriggerBody(BaseModel):
    """A trigger's optional body."""

    model_config = ConfigDict(extra="forbid", strict=True)

    payload: dict[str, Any] | None = None


async def cancel(rt: Runtime, *, job_id: str, actor: str) -> None:
    """Cancel the job's current run wherever it executes (its handler stops within moments; a retry waiting out
    its backoff ends at once). Conflict when nothing runs, Unavailable while Redis cannot take the request.
    Audited as `jobs.cancel`."""
    job = await jobs_table.get_or_raise(job_id=job_id)
    try:
        cancelled = await engine.cancel(rt, job, actor=actor)
    except engine.QueueUnavailable as exc:
        raise Unavailable(str(exc)) from exc
    if not cancelled:
        raise Conflict("No run of this job is in progress", code="not_running")
    await activity_service.record(event="jobs.cancel", actor=actor, job_id=job.id, details={})


async def progress_of_running(job_ids: list[str]) -> list[dict[str, Any] | None]:
    """Each job's open run's latest progress report (None: no open run, or it reported none), in one query."""
    rows = await Run.filter(job_id__in=job_ids, completed_at__isnull=True).order_by("id").values("job_id", "progress")
    latest = {str(r["job_id"]): r["progress"] for r in rows}  # the newest open run of each job wins
    return [latest.get(job_id) for job_id in job_ids]


def _run_id(value: int | str) -> int:
    message = "Run id must be a positive integer"
    run_id = as_int(value, message, "invalid_run_id")
    if not 0 < run_id <= MAX_RUN_ID:
        raise Invalid(message, code="invalid_run_id")
    return run_id


async def get_run(*, run_id: int | str) -> Run:
    """One run, with its output, progress and traceback. Invalid for a malformed id, NotFound for an unknown one."""
    run = await Run.get_or_none(id=_run_id(run_id))
    if run is None:
        raise NotFound(f"Run '{run_id}' not found", code="run_not_found")
    return run


@dataclass(frozen=True, slots=True)
class LogPage:
    run_id: int
    lines: list[engine.Line]
    after: int  # the `after` of the next page: the last line's seq (the request's own when it is empty)
    more: bool  # more lines are stored past this page
    ended: bool  # the run had ended when the page was read: no line will follow the stored ones


def _line(row: RunLogLine) -> engine.Line:
    return engine.Line(seq=row.seq, at=row.at, level=row.level, message=row.message, fields=row.extra)


async def _lines(run_id: int, after: int, limit: int) -> list[engine.Line]:
    rows = await RunLogLine.filter(run_id=run_id, seq__gt=after).order_by("seq").limit(limit)
    return [_line(r) for r in rows]


def _after(value: int | str | None) -> int:
    if value is None:
        return 0
    after = as_int(value, "after must be an integer >= 0 (the seq of the last line read)", "invalid_after")
    if not 0 <= after <= 2**31 - 1:
        raise Invalid("after must be an integer >= 0 (the seq of the last line read)", code="invalid_after")
    return after


async def log_page(*, run_id: int | str, after: int | str | None, limit: int | str | None) -> LogPage:
    """The run's log lines numbered past `after`, in order, `limit` of them (default 100, at most 1,000)."""
    start = _after(after)
    count = LOG_DEFAULT if limit is None else as_int(limit, f"limit must be 1..{LOG_MAX}", "invalid_limit")
    if not 1 <= count <= LOG_MAX:
        raise Invalid(f"limit must be 1..{LOG_MAX}", code="invalid_limit")
    run = await get_run(run_id=run_id)
    # Ended is read first: a run closed by then has every line it kept stored (its log is closed before it).
    ended = run.completed_at is not None
    lines = await _lines(run.id, start, count + 1)
    more = len(lines) > count
    lines = lines[:count]
    return LogPage(run.id, lines, lines[-1].seq if lines else start, more, ended)


async def follow_log(
    feed: engine.LogFeed, *, run_id: int | str, after: int | str | None, until: float | None = None
) -> AsyncGenerator[list[engine.Line], None]:
    """The run's lines past `after` as they are written, each once and in order, across instances; ends once the
    run has ended and its last line was given (or at `until`, a time.time(): the caller's token expiry).

    Subscribed before the first read: a line written after that read reaches the inbox, one written before is
    in the read. The inbox's lines are taken while they follow on from the last one given; anything else (a
    gap, lost messages, the run's end, a quiet spell) sends the follower back to the database."""
    start = _after(after)
    run = await get_run(run_id=run_id)
    inbox = feed.open(run.id)
    last = start
    try:
        while True:
            ended = await Run.filter(id=run.id, completed_at__isnull=False).exists()
            while lines := await _lines(run.id, last, LOG_MAX):
                last = lines[-1].seq
                yield lines
            if ended:
                return
            while True:
                wait = FOLLOW_CHECK_SECONDS if until is None else min(FOLLOW_CHECK_SECONDS, until - time.time())
                if wait <= 0:
                    return
                news = await inbox.next(wait)
                if news is None or news.ended or news is engine.LOG_STALE:
                    break
                fresh = [engine.Line.from_wire(w) for w in news.lines]
                fresh = [line for line in fresh if line.seq > last]
                if not fresh:
                    continue
                if fresh[0].seq != last + 1:
                    break  # a gap: the database has what is missing
                last = fresh[-1].seq
                yield fresh
    finally:
        feed.close(inbox)
