"""Every Prometheus metric jobs-gateway exposes, and the small functions the code calls to record them.

The metrics live in prometheus_client's default registry, one set per process: each API instance and
each standalone worker exposes what happened in it, and Prometheus sums across them. A run is counted
where it happens: started by the worker that runs it, finished by whoever closes it (that worker, or a
reaper in any process when the worker was lost).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# Runs last from milliseconds (cleanups) to many minutes (syncs, reindexes).
RUN_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
# Scheduler lag: a healthy worker starts a fire within a poll delay; minutes mean no worker was there.
LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

HTTP_REQUESTS = Counter(
    "jobs_gateway_http_requests_total",
    "HTTP requests by method, route template and status code.",
    ["method", "route", "status"],
)
HTTP_DURATION = Histogram(
    "jobs_gateway_http_request_duration_seconds",
    "HTTP request latency by method and route template.",
    ["method", "route"],
)
RUNS_STARTED = Counter(
    "jobs_gateway_runs_started_total",
    "Runs whose handler started, by job id and trigger (scheduler or manual).",
    ["job_id", "trigger"],
)
RUNS_FINISHED = Counter(
    "jobs_gateway_runs_finished_total",
    "Runs closed, by job id and result (success or error), counted in the process that closed them.",
    ["job_id", "result"],
)
RUN_DURATION = Histogram(
    "jobs_gateway_run_duration_seconds", "Duration of finished runs, by job id.", ["job_id"], buckets=RUN_BUCKETS
)
FIRES_SKIPPED = Counter(
    "jobs_gateway_fires_skipped_total",
    "Scheduled fire instants that did not run, by job id and reason (overlap, outside_catch_up_window, "
    "cancelled_by_policy, disabled).",
    ["job_id", "reason"],
)
RETRIES = Counter(
    "jobs_gateway_run_retries_total",
    "Failed attempts followed by another attempt (the job's retry policy).",
    ["job_id"],
)
CANCELS = Counter(
    "jobs_gateway_runs_cancelled_total",
    "Cancellations requested, by job id and who asked (user, or policy: a cancel_running fire).",
    ["job_id", "by"],
)
AUTO_PAUSES = Counter(
    "jobs_gateway_jobs_auto_paused_total",
    "Jobs that disabled themselves after pauseAfterFailures consecutive failed runs.",
    ["job_id"],
)
LEASE_LOSSES = Counter(
    "jobs_gateway_lease_losses_total",
    "Runs whose lease was lost: reason worker_lost (reaped after the worker vanished) or lease_lost "
    "(the handler was cancelled because its lease could not be renewed).",
    ["job_id", "reason"],
)
SCHEDULER_LAG = Histogram(
    "jobs_gateway_scheduler_lag_seconds",
    "Delay between a scheduled fire time and the start of its handler.",
    buckets=LAG_BUCKETS,
)
QUEUE_DEPTH = Gauge(
    "jobs_gateway_queue_depth",
    "Entries in the arq queue (due and deferred fires, queued triggers), read from Redis at scrape time; "
    "NaN when Redis did not answer.",
)
WEBSOCKET_SUBSCRIBERS = Gauge(
    "jobs_gateway_websocket_subscribers", "Websockets (GraphQL subscriptions, the dashboard) connected to this process."
)
LIVE_SUBSCRIPTIONS = Gauge(
    "jobs_gateway_live_subscriptions",
    "Subscriptions fed by this process's one Redis event subscription (shared streams count once).",
)
EVENTS_PUBLISHED = Counter(
    "jobs_gateway_events_published_total", "State-change events published on Redis, by event.", ["event"]
)
EVENTS_DELIVERED = Counter(
    "jobs_gateway_events_delivered_total", "Job state changes handed to a subscriber of this process."
)
EVENTS_DROPPED = Counter(
    "jobs_gateway_events_dropped_total",
    "Job state changes dropped for a slow subscriber because a newer state of the same job replaced them.",
)
RUN_LOG_LINES = Counter(
    "jobs_gateway_run_log_lines_total",
    "Lines handlers logged through ctx.log, by what became of them: kept with the run, or dropped past the run's "
    "RUN_LOG_MAX_LINES / RUN_LOG_MAX_BYTES.",
    ["outcome"],
)
RUN_LOG_WRITES = Counter(
    "jobs_gateway_run_log_writes_total",
    "Writes of run log lines or progress: each carries the batches of every run flushing at that moment.",
)

SCHEDULER = "scheduler"


def trigger_kind(triggered_by: str) -> str:
    """`scheduler` or `manual`: never the user id, which would make one series per user."""
    return SCHEDULER if triggered_by == SCHEDULER else "manual"


def run_started(job_id: str, triggered_by: str, lag_seconds: float | None) -> None:
    RUNS_STARTED.labels(job_id=job_id, trigger=trigger_kind(triggered_by)).inc()
    if lag_seconds is not None:
        SCHEDULER_LAG.observe(max(0.0, lag_seconds))


def run_finished(job_id: str, result: str, duration_ms: int) -> None:
    RUNS_FINISHED.labels(job_id=job_id, result=result).inc()
    RUN_DURATION.labels(job_id=job_id).observe(duration_ms / 1000)


def lease_lost(job_id: str, reason: str) -> None:
    LEASE_LOSSES.labels(job_id=job_id, reason=reason).inc()


def fires_skipped(job_id: str, reason: str, count: int = 1) -> None:
    FIRES_SKIPPED.labels(job_id=job_id, reason=reason).inc(count)


def retried(job_id: str) -> None:
    RETRIES.labels(job_id=job_id).inc()


def cancel_requested(job_id: str, by: str) -> None:
    CANCELS.labels(job_id=job_id, by=by).inc()


def auto_paused(job_id: str) -> None:
    AUTO_PAUSES.labels(job_id=job_id).inc()


# Every metric labelled by job id: a deleted job's series go with it, so series do not grow with job churn.
PER_JOB = (RUNS_STARTED, RUNS_FINISHED, RUN_DURATION, FIRES_SKIPPED, LEASE_LOSSES, RETRIES, CANCELS, AUTO_PAUSES)


def job_deleted(job_id: str) -> None:
    """Drop this process's series of a deleted job; other processes do the same on its `job.deleted` event."""
    for metric in PER_JOB:
        metric.remove_by_labels({"job_id": job_id})


def event_published(event: str) -> None:
    EVENTS_PUBLISHED.labels(event=event).inc()
