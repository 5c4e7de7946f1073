"""Scenarios 3 and 6: Redis restarted, the database locked or stopped, with two APIs and two workers
running. Reads keep working or fail fast with 503 `unavailable`; everything works again after."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tortoise import Tortoise

from app.data.jobs import Job
from app.data.runs import Run
from app.engine import scheduler
from app.platform import db
from app.platform.runtime import Runtime
from tests.reliability.harness import Cluster, Subscriber, create_job, figure, running_cluster, wait_for
from tests.support.servers import PostgresCluster

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

OUTAGE_SECONDS = 5.0
SQLITE_BUSY_SECONDS = 5.0
TRIGGER = "mutation T($id: ID!) { triggerJob(id: $id) { ... on JobActionResult { success } } }"


@pytest.fixture(scope="module")
def cluster(module_workdir: Path, module_database_url: str) -> Iterator[Cluster]:
    with running_cluster(module_workdir, module_database_url) as c:
        yield c


async def _timed(call: Any) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = await call
    return response, time.monotonic() - started


async def test_s03_redis_restart_reads_from_the_database_refuses_triggers_then_recovers(
    cluster: Cluster, cluster_orm: Runtime
) -> None:
    async with cluster.client() as client:
        # Runs long enough that `running: true` is a state the subscriber is sure to be shown (a
        # subscriber is sent the latest state per job: a shorter run may reach it as its end only).
        await create_job(client, "s03", type="rel_traced", payload={"seconds": 1.5})
        for i in range(3):
            await create_job(client, f"s03-tick-{i}", type="rel_traced", schedule="@every 3s")
    subscriber = await Subscriber.open(cluster.ws_url(1), cluster.token, "s03")
    try:
        cluster.redis.stop()  # no persistence: Redis comes back empty, every queued fire is gone
        down_at = time.monotonic()
        slowest = 0.0
        async with cluster.client(0) as a, cluster.client(1) as b:
            while time.monotonic() - down_at < OUTAGE_SECONDS:
                for client in (a, b):
                    listed, t1 = await _timed(client.get("/api/jobs"))
                    one, t2 = await _timed(client.get("/api/jobs/s03"))
                    refused, t3 = await _timed(client.post("/api/jobs/s03/trigger"))
                    gql, t4 = await _timed(client.post("/graphql", json={"query": TRIGGER, "variables": {"id": "s03"}}))
                    slowest = max(slowest, t1, t2, t3, t4)
                    assert listed.status_code == 200 and one.json()["running"] is False
                    assert (refused.status_code, refused.json()["error"]) == (503, "unavailable")
                    assert gql.json()["errors"][0]["extensions"]["code"] == "UNAVAILABLE", gql.text
                await asyncio.sleep(0.2)
            # Enabling and disabling are saved while Redis is down.
            assert (await a.patch("/api/jobs/s03-tick-2", json={"enabled": False})).status_code == 200
        cluster.redis.start()
        up_at = time.monotonic()

        async def trigger_works() -> bool:
            async with cluster.client(1) as client:
                return (await client.post("/api/jobs/s03/trigger")).status_code == 200

        trigger_after = await wait_for(trigger_works, timeout=10, interval=0.2)
        before = len(subscriber.states)

        async def fires_enqueued() -> bool:
            jobs = await Job.filter(enabled=True, id__startswith="s03-tick")
            for job in jobs:
                fire = job.next_run_at
                if fire is None or not (await scheduler.fires_pending(cluster_orm, [(job.id, fire)]))[0]:
                    return False
            return await Job.filter(id="s03-tick-2", next_run_at__isnull=True).exists()

        await wait_for(fires_enqueued, timeout=10 - (time.monotonic() - up_at), interval=0.1)
        fires_after = time.monotonic() - up_at
        # That run may have ended while this API was still re-subscribing: its state comes by resync.
        first = await subscriber.seen(lambda s: not s["running"] and s["lastRun"], timeout=10, after=before)
        # And the live events flow again: the next run is seen starting and ending. The mark comes before the
        # trigger: the run's start can reach the subscriber before the trigger's answer reaches this test.
        mark = len(subscriber.states)
        async with cluster.client(0) as client:
            assert (await client.post("/api/jobs/s03/trigger")).status_code == 200
        await subscriber.seen(lambda s: s["running"], timeout=10, after=mark)
        await subscriber.seen(lambda s: not s["running"] and s["lastRun"] != first["lastRun"], timeout=10, after=mark)
        pushed_after = time.monotonic() - up_at

        figure(
            "S3",
            slowest_answer_while_down_s=slowest,
            trigger_ok_after_s=trigger_after,
            fires_enqueued_after_s=fires_after,
            subscriber_event_after_s=pushed_after,
            workers_alive=[w.proc is not None and w.proc.poll() is None for w in cluster.workers],
        )
        assert slowest < 5.0
        assert subscriber.closed is None
        assert all(w.proc is not None and w.proc.poll() is None for w in cluster.workers), cluster.logs()
    finally:
        await subscriber.close()
        if not cluster.redis.running:
            cluster.redis.start()
        async with cluster.client() as client:
            for i in range(3):
                await client.patch(f"/api/jobs/s03-tick-{i}", json={"enabled": False})


async def test_s03_a_standalone_worker_exits_nonzero_when_redis_stays_away_past_its_retry_budget(
    cluster: Cluster, cluster_orm: Runtime
) -> None:
    """A supervisor (systemd, Kubernetes) restarts a worker that exits; one that hangs is never noticed."""
    budget = 2
    impatient = cluster.new_worker("impatient")
    impatient.env["WORKER_REDIS_RETRY_SECONDS"] = str(budget)
    impatient.start()
    try:
        cluster.redis.stop()
        started = time.monotonic()
        code = await asyncio.to_thread(impatient.wait, 40)
        took = time.monotonic() - started
    finally:
        if not cluster.redis.running:
            cluster.redis.start()
        impatient.stop()
    figure("S3-worker", exit_code=code, exited_after_s=took, retry_budget_s=budget)
    assert code != 0
    assert took >= budget - 0.2, "gave up before its retry budget was spent"
    # The budget plus a poll's Redis round trips, each bounded by the socket timeout.
    assert took < budget + 20
    assert all(w.proc is not None and w.proc.poll() is None for w in cluster.workers), cluster.logs()


class _SqliteLock:
    """Another process holds the write lock: every writer waits out its busy timeout, then fails."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.conn: sqlite3.Connection | None = None

    def begin(self) -> None:
        self.conn = sqlite3.connect(self.path, timeout=5, isolation_level=None)
        self.conn.execute("BEGIN EXCLUSIVE")

    def end(self) -> None:
        assert self.conn is not None
        self.conn.execute("ROLLBACK")
        self.conn.close()


class _PostgresOutage:
    """The PostgreSQL server stopped (fast shutdown: connections dropped) for the outage."""

    def __init__(self, pg: PostgresCluster) -> None:
        self.pg = pg

    def begin(self) -> None:
        self.pg.stop("fast")

    def end(self) -> None:
        self.pg.start()


async def _reopen_orm(cluster: Cluster) -> None:
    await Tortoise.init(config=db.tortoise_config(cluster.settings), _enable_global_fallback=True)


async def test_s06_database_locked_or_stopped_answers_503_then_recovers(
    cluster: Cluster, cluster_orm: Runtime, db_backend: str, request: pytest.FixtureRequest
) -> None:
    async with cluster.client() as client:
        await create_job(client, "s06", type="rel_traced", payload={"seconds": 0.1})
        await create_job(client, "s06-tick", type="rel_traced", schedule="@every 1s", payload={"seconds": 0.3})
    await wait_for(lambda: Run.filter(job_id="s06-tick", completed_at__isnull=False).exists(), timeout=15)
    subscriber = await Subscriber.open(cluster.ws_url(0), cluster.token, "s06")
    await Tortoise.close_connections()  # the test's own pool would hold dead connections after the outage
    outage: _SqliteLock | _PostgresOutage
    if db_backend == "postgres":
        pg, _ = request.getfixturevalue("postgres_template")
        outage = _PostgresOutage(pg)
    else:
        outage = _SqliteLock(cluster.settings.database_url.removeprefix("sqlite://"))
    outage.begin()
    answers: list[tuple[int, str, float]] = []
    try:
        started = time.monotonic()
        async with cluster.client(0, timeout=30) as a, cluster.client(1, timeout=30) as b:
            while time.monotonic() - started < 6.0:
                for client in (a, b):
                    for method, path, body in (
                        ("GET", "/api/jobs", None),
                        ("PATCH", "/api/jobs/s06", {"enabled": False}),
                        ("POST", "/api/jobs/s06/trigger", None),
                    ):
                        response, took = await _timed(client.request(method, path, json=body))
                        error = response.json().get("error", "") if response.status_code >= 400 else ""
                        answers.append((response.status_code, error, took))
                        if response.status_code >= 500:
                            assert response.json()["error"] == "unavailable", response.text
                            assert "database" in response.json()["message"].lower(), response.text
    finally:
        outage.end()
    refused = [a for a in answers if a[0] == 503]
    statuses = sorted({a[0] for a in answers})
    figure(
        "S6",
        backend=db_backend,
        answers=len(answers),
        unavailable=len(refused),
        statuses=statuses,
        slowest_s=max(a[2] for a in answers),
    )
    assert refused, "the outage was never noticed"
    assert set(statuses) <= {200, 503}
    # SQLite: a writer waits out the busy timeout (5 s, sqlite3's default) and may first queue behind
    # a background write on the process's single connection. PostgreSQL refuses at once.
    assert max(a[2] for a in answers) < (2 * SQLITE_BUSY_SECONDS + 2 if db_backend == "sqlite" else 5.0)
    # After recovery: a trigger runs, and no run stays half-written. The mark comes first: the 0.1 s run can
    # end and reach the subscriber before the calls below return.
    seen_from = len(subscriber.states)
    async with cluster.client() as client:

        async def triggered() -> bool:
            return (await client.post("/api/jobs/s06/trigger")).status_code == 200

        await wait_for(triggered, timeout=20, interval=0.5)
        await client.patch("/api/jobs/s06-tick", json={"enabled": False})
    # The live events outlived the outage: the subscriber sees the run without reconnecting.
    await subscriber.seen(lambda s: not s["running"] and s["lastResult"] == "success", timeout=15, after=seen_from)
    await subscriber.close()
    await _reopen_orm(cluster)
    lease = cluster.settings.lease_ttl_seconds + 2 * cluster.settings.heartbeat_seconds + 15

    async def all_closed() -> bool:
        return not await Run.filter(job_id__startswith="s06", completed_at__isnull=True).exists()

    await wait_for(all_closed, timeout=lease, interval=0.5)
    for run in await Run.filter(job_id__startswith="s06"):
        assert None not in (run.completed_at, run.result, run.duration_ms), run
    assert await Run.filter(job_id="s06", result="success").exists()
