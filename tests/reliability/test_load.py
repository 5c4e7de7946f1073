"""Scenarios 8, 9 and 10 in one timed window: 200 jobs firing every second across two workers and two
APIs (8), watched by 1,000 websocket subscribers in another process (9), one of which never reads (10).

The window is 60 s on PostgreSQL, the production backend, and LOAD_SECONDS_SQLITE on SQLite, so that
both passes fit the CI budget (docs/reliability.md)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from tortoise import connections
from tortoise.transactions import in_transaction

from app.data.jobs import Job
from app.data.runs import Run
from app.platform.runtime import Runtime
from tests.reliability.harness import Cluster, create_job, figure, rss_mb, running_cluster
from tests.support.engine import skipped_fires
from tests.support.processes import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.load]

JOBS = 200
SUBSCRIBERS = 1000
LOAD_SECONDS_POSTGRES = 60.0
LOAD_SECONDS_SQLITE = 20.0
RUN_SECONDS = 0.3  # long enough that `running: true` is a state a subscriber can be shown
EDGE = 3.0  # seconds at each end of the window whose fires may straddle its start or end


@pytest.fixture(scope="module")
def cluster(module_workdir: Path, module_database_url: str) -> Iterator[Cluster]:
    with running_cluster(module_workdir, module_database_url, worker_max_jobs=150) as c:
        yield c


@pytest.fixture(scope="module")
def load_seconds(db_backend: str) -> float:
    return LOAD_SECONDS_POSTGRES if db_backend == "postgres" else LOAD_SECONDS_SQLITE


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _ms(moment: datetime) -> int:
    """Whole milliseconds since the epoch, as the API renders timestamps (exact, no float rounding)."""
    return (moment - EPOCH) // timedelta(milliseconds=1)


def _parse_ms(ts: str) -> int:
    return _ms(datetime.fromisoformat(ts.replace("Z", "+00:00")))


def _watcher_misses(states: list[list[Any]], runs: list[Run], until: float) -> tuple[int, int, int, list[float]]:
    """(starts unseen, ends unseen, finishes out of order, delivery delays) of one subscriber.

    A run's end is the state `running: false, lastRun: <its start>`; its start is any `running: true`
    state between the previous run's end and its own."""
    finished = {_parse_ms(s[2]): i for i, s in enumerate(states) if not s[1] and s[2] is not None}
    order = [_parse_ms(s[2]) for s in states if not s[1] and s[2] is not None]
    out_of_order = sum(1 for a, b in pairwise(order) if b < a)
    unseen_starts = unseen_ends = 0
    delays: list[float] = []
    for run in sorted(runs, key=lambda r: r.started_at):
        if run.completed_at is None or run.completed_at.timestamp() > until:
            continue
        started = _ms(run.started_at)
        index = finished.get(started)
        if index is None:
            unseen_ends += 1
            continue
        delays.append(states[index][0] - run.completed_at.timestamp())
        previous = max((i for t, i in finished.items() if t < started), default=-1)
        if not any(s[1] for s in states[previous + 1 : index]):
            unseen_starts += 1
    return unseen_starts, unseen_ends, out_of_order, delays


async def _disable(jobs: list[str]) -> None:
    if connections.get("default").capabilities.dialect != "postgres":
        await Job.filter(id__in=jobs).update(enabled=False, next_run_at=None)
        return
    # On PostgreSQL the rows are locked in id order first, as the workers' batched claims and completions
    # lock them: one UPDATE over 200 rows takes its row locks in any order and can deadlock with them.
    # (tortoise drops FOR UPDATE from a values_list query: plain SQL, in the same transaction.)
    async with in_transaction() as tx:
        await tx.execute_query("SELECT id FROM job WHERE id = ANY($1) ORDER BY id FOR UPDATE", [sorted(jobs)])
        await tx.execute_query("UPDATE job SET enabled = false, next_run_at = NULL WHERE id = ANY($1)", [jobs])


@pytest.mark.timeout(300)
async def test_s08_s09_s10_two_hundred_jobs_every_second_watched_by_a_thousand_subscribers(
    cluster: Cluster, cluster_orm: Runtime, load_seconds: float
) -> None:
    jobs = [f"load-{i:03d}" for i in range(JOBS)]
    async with cluster.client(timeout=30) as client:
        for chunk in range(0, JOBS, 20):
            await asyncio.gather(
                *(
                    create_job(
                        client, job_id, type="rel_traced", schedule="@every 1s", payload={"seconds": RUN_SECONDS}
                    )
                    for job_id in jobs[chunk : chunk + 20]
                )
            )
    out = cluster.workdir / "subscribers.json"
    argv = [sys.executable, "-m", "tests.reliability.subscribers", "--jobs", ",".join(jobs)]
    argv += [f"--ws={cluster.ws_url(i)}" for i in range(len(cluster.apis))]
    argv += [f"--count={SUBSCRIBERS}", f"--seconds={load_seconds}", f"--out={out}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SUBSCRIBER_TOKEN": cluster.token}
    clients = await asyncio.create_subprocess_exec(
        *argv, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        assert clients.stdout is not None
        ready_line = (await asyncio.wait_for(clients.stdout.readline(), 150)).decode()
        assert ready_line.startswith("ready"), ready_line
        rss_before = [rss_mb(api) for api in cluster.apis]
        await asyncio.sleep(load_seconds)
        rss_after = [rss_mb(api) for api in cluster.apis]
        rest, _ = await asyncio.wait_for(clients.communicate(), 90)
        assert clients.returncode == 0, rest.decode()
    finally:
        if clients.returncode is None:
            clients.kill()
            await clients.wait()
        # Stop the schedule; pending fires are then dropped at claim. Let in-flight runs finish.
        await _disable(jobs)
        await asyncio.sleep(RUN_SECONDS + 1.5)
    results: dict[str, Any] = json.loads(out.read_text())
    start = datetime.fromtimestamp(results["ready"] + EDGE, UTC)
    end = datetime.fromtimestamp(results["ended"] - EDGE, UTC)
    runs = await Run.filter(job_id__in=jobs, fire_at__isnull=False)

    # Scenario 8: every fire of the window ran, once.
    window = [r for r in runs if r.fire_at is not None and start <= r.fire_at < end]
    duplicates = sum(n - 1 for n in Counter((r.job_id, r.fire_at) for r in runs).values() if n > 1)
    missed = 0
    for job_id in jobs:
        fires = sorted(r.fire_at for r in window if r.job_id == job_id and r.fire_at is not None)
        missed += sum(round((b - a).total_seconds()) - 1 for a, b in pairwise(fires))
        if fires:
            missed += max(0, int((fires[0] - start).total_seconds()) - 1) + max(
                0, int((end - fires[-1]).total_seconds()) - 1
            )
        else:
            missed += int((end - start).total_seconds())
    lags = sorted((r.started_at - r.fire_at).total_seconds() for r in window if r.fire_at is not None)
    skipped = await skipped_fires()
    p99 = lags[int(len(lags) * 0.99)] if lags else float("nan")
    figure(
        "S8",
        seconds=load_seconds,
        fires_in_window=len(window),
        duplicates=duplicates,
        missed=missed,
        lag_p50_ms=lags[len(lags) // 2] * 1000 if lags else float("nan"),
        lag_p99_ms=p99 * 1000,
        lag_max_ms=lags[-1] * 1000 if lags else float("nan"),
        skipped_overlapping=skipped.get("overlap", 0),
        failed=sum(1 for r in window if r.result != "success"),
    )

    # Scenario 9: each subscriber saw each run of its job start and finish, in order.
    by_job: dict[str, list[Run]] = defaultdict(list)
    for run in window:
        by_job[run.job_id].append(run)
    unseen_starts = unseen_ends = out_of_order = perfect = 0
    delivery: list[float] = []
    for watcher in results["watchers"]:
        starts, ends, disorder, delays = _watcher_misses(watcher["states"], by_job[watcher["job"]], end.timestamp())
        unseen_starts, unseen_ends, out_of_order = unseen_starts + starts, unseen_ends + ends, out_of_order + disorder
        delivery += delays
        perfect += (starts, ends, disorder) == (0, 0, 0)
    delivery.sort()
    closed = sum(1 for w in results["watchers"] if w["closed"] not in (None, 1000))
    figure(
        "S9",
        subscribers=len(results["watchers"]),
        connect_s=results["ready"] - results["started"],
        perfect_subscribers=perfect,
        unseen_starts=unseen_starts,
        unseen_ends=unseen_ends,
        out_of_order=out_of_order,
        delivery_p50_ms=delivery[len(delivery) // 2] * 1000 if delivery else float("nan"),
        delivery_p99_ms=delivery[int(len(delivery) * 0.99)] * 1000 if delivery else float("nan"),
        closed_early=closed,
        rss_before_mb=[round(r) for r in rss_before],
        rss_after_mb=[round(r) for r in rss_after],
    )

    # Scenario 10: the stalled subscriber cost bounded memory and was coalesced (or dropped).
    stalled = results["stalled"]
    events = 2 * len([r for r in runs if r.started_at.timestamp() >= results["ready"]])
    figure(
        "S10",
        stalled_received=stalled["received"],
        events_published=events,
        stalled_closed=stalled["closed"],
        rss_growth_mb=[round(a - b) for a, b in zip(rss_after, rss_before, strict=True)],
    )

    assert duplicates == 0
    assert missed == 0
    assert closed == 0
    assert (unseen_starts, unseen_ends, out_of_order) == (0, 0, 0)
    assert stalled["received"] < events or stalled["closed"] not in (None, 1000)
    assert all(after < before + 100 for before, after in zip(rss_before, rss_after, strict=True))
