"""Scenarios 1, 2, 4, 5 and 7: workers and API processes killed, stopped and restarted mid-work, and
a stampede of triggers, against two APIs and two `arq` workers sharing Redis and the database."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from app.data.runs import Run
from app.platform.runtime import Runtime
from tests.reliability.harness import Cluster, Subscriber, create_job, figure, graphql, running_cluster, wait_for
from tests.reliability.job_types import executions

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

GRACE = 3.0  # MISFIRE_GRACE_SECONDS for scenario 5: an outage longer than this is a missed window


@pytest.fixture(scope="module")
def cluster(module_workdir: Path, module_database_url: str) -> Iterator[Cluster]:
    with running_cluster(module_workdir, module_database_url, misfire_grace_seconds=GRACE) as c:
        yield c


async def _running_everywhere(cluster: Cluster, job_id: str) -> set[bool]:
    """`running` as each API answers it, over REST and GraphQL."""
    seen: set[bool] = set()
    for index in range(len(cluster.apis)):
        async with cluster.client(index) as client:
            seen.add((await client.get(f"/api/jobs/{job_id}")).json()["running"])
            body = await graphql(client, "query Q($id: ID!) { job(id: $id) { running } }", id=job_id)
            seen.add(body["data"]["job"]["running"])
    return seen


async def _disable(cluster: Cluster, *job_ids: str) -> None:
    async with cluster.client() as client:
        for job_id in job_ids:
            assert (await client.patch(f"/api/jobs/{job_id}", json={"enabled": False})).status_code == 200


async def test_s01_sigkill_mid_run_is_worker_lost_everywhere_and_the_survivor_runs_the_next_fire(
    cluster: Cluster, cluster_orm: Runtime
) -> None:
    trace = cluster.workdir / "s01.trace"
    async with cluster.client() as client:
        await create_job(
            client, "s01", type="rel_traced", schedule="@every 5s", payload={"seconds": 3.5, "trace": str(trace)}
        )
    subscriber = await Subscriber.open(cluster.ws_url(1), cluster.token, "s01")
    try:
        await wait_for(lambda: _async(bool(executions(trace))), timeout=15)
        [(_, run_id, pid)] = executions(trace)
        [victim] = [w for w in cluster.workers if w.proc is not None and w.proc.pid == pid]
        survivor = next(w for w in cluster.workers if w is not victim)
        victim.signal(signal.SIGKILL)
        victim.wait(5)
        killed = time.monotonic()
        run = await Run.get(id=run_id)

        async def recorded() -> bool:
            await run.refresh_from_db()
            return run.completed_at is not None

        took = await wait_for(recorded, timeout=30)
        assert (run.result, run.details) == ("error", "worker lost")
        assert await _running_everywhere(cluster, "s01") == {False}
        state = await subscriber.seen(lambda s: s["lastResult"] == "error" and not s["running"], timeout=10)
        pushed = time.monotonic() - killed
        # The next fire runs, necessarily on the survivor: the victim is dead.
        await wait_for(lambda: _next_success(run_id, "s01"), timeout=20)
        ran_on = {p for _, r, p in executions(trace) if r != run_id}
        assert survivor.proc is not None and ran_on == {survivor.proc.pid}
        bound = cluster.settings.lease_ttl_seconds + cluster.settings.heartbeat_seconds + 2.0
        figure("S1", worker_lost_after_s=took, subscriber_saw_after_s=pushed, bound_s=bound, last_state=str(state))
        assert took <= bound
    finally:
        await subscriber.close()
        await _disable(cluster, "s01")
        await asyncio.to_thread(_start_all, cluster)


async def _next_success(after_run: int, job_id: str) -> bool:
    return await Run.filter(job_id=job_id, id__gt=after_run, result="success").exists()


async def _async(value: bool) -> bool:
    return value


async def test_s02_sigterm_mid_run_finishes_within_the_grace_or_records_worker_shut_down(
    cluster: Cluster, cluster_orm: Runtime
) -> None:
    trace = cluster.workdir / "s02.trace"
    async with cluster.client() as client:
        await create_job(client, "s02-short", type="rel_traced", payload={"seconds": 1.0, "trace": str(trace)})
        await create_job(client, "s02-endless", type="test_block")
        for job_id in ("s02-short", "s02-endless"):
            assert (await client.post(f"/api/jobs/{job_id}/trigger")).status_code == 200
    await wait_for(lambda: _open_runs("s02-short", "s02-endless"), timeout=15)
    started = time.monotonic()
    for worker in cluster.workers:
        worker.signal(signal.SIGTERM)
    codes = [await asyncio.to_thread(w.wait, 30) for w in cluster.workers]
    stopped_in = time.monotonic() - started
    try:
        short = await Run.get(job_id="s02-short")
        endless = await Run.get(job_id="s02-endless")
        figure("S2", stop_s=stopped_in, grace_s=cluster.settings.shutdown_grace_seconds, exit_codes=codes)
        assert (short.result, short.details) == ("success", "done")
        assert (endless.result, endless.details) == ("error", "worker shut down")
        assert await Run.filter(completed_at__isnull=True).count() == 0
        for job_id in ("s02-short", "s02-endless"):
            assert await _running_everywhere(cluster, job_id) == {False}
        assert stopped_in < cluster.settings.shutdown_grace_seconds + 5
        assert codes == [0, 0]
    finally:
        await asyncio.to_thread(_start_all, cluster)


async def _open_runs(*job_ids: str) -> bool:
    return await Run.filter(job_id__in=job_ids).count() == len(job_ids)


def _start_all(cluster: Cluster) -> None:
    for worker in cluster.workers:
        if worker.proc is None or worker.proc.poll() is not None:
            worker.start()


async def test_s04_restarting_an_api_during_a_burst_loses_and_doubles_no_trigger(
    cluster: Cluster, cluster_orm: Runtime
) -> None:
    trace = cluster.workdir / "s04.trace"
    jobs = [f"s04-{i}" for i in range(8)]
    async with cluster.client() as client:
        for job_id in jobs:
            await create_job(client, job_id, type="rel_traced", payload={"seconds": 0.05, "trace": str(trace)})
    accepted: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    deadline = time.monotonic() + 6.0

    async def hammer(index: int) -> None:
        job_id = jobs[index % len(jobs)]
        api = cluster.apis[index % 2]
        while time.monotonic() < deadline:
            try:
                async with httpx.AsyncClient(base_url=api.url, headers=cluster.auth, timeout=10) as client:
                    response = await client.post(f"/api/jobs/{job_id}/trigger")
            except httpx.TransportError:
                statuses["connection refused"] += 1  # the API is restarting: the client retries
                await asyncio.sleep(0.05)
                continue
            statuses[str(response.status_code)] += 1
            if response.status_code == 200:
                accepted[job_id] += 1
            await asyncio.sleep(0.02)

    async def restart() -> float:
        await asyncio.sleep(2.0)
        begun = time.monotonic()
        await asyncio.to_thread(cluster.apis[0].stop)
        await asyncio.to_thread(cluster.apis[0].start)
        return time.monotonic() - begun

    *_, restart_took = await asyncio.gather(*(hammer(i) for i in range(16)), restart())

    async def settled() -> bool:
        return await Run.filter(job_id__in=jobs, completed_at__isnull=False).count() >= sum(accepted.values())

    await wait_for(settled, timeout=30)
    await asyncio.sleep(1.0)  # anything that would run twice has had its chance
    runs = await Run.filter(job_id__in=jobs)
    ran = Counter(job for job, _, _ in executions(trace))
    doubled = [r for r, n in Counter(r for _, r, _ in executions(trace)).items() if n > 1]
    figure(
        "S4",
        accepted=sum(accepted.values()),
        runs=len(runs),
        executions=sum(ran.values()),
        doubled=len(doubled),
        restart_s=restart_took,
        statuses=dict(statuses),
    )
    assert set(statuses) <= {"200", "409", "connection refused"}
    assert sum(accepted.values()) > 0
    assert doubled == []
    for job_id in jobs:
        mine = [r for r in runs if r.job_id == job_id]
        assert len(mine) == accepted[job_id] == ran[job_id], job_id
        assert all(r.result == "success" for r in mine)
    async with cluster.client(1) as client:
        for job_id in jobs:
            logs = (await client.get(f"/api/jobs/{job_id}/logs", params={"limit": 100})).json()
            assert logs["total"] == accepted[job_id]


async def test_s05_workers_down_past_the_grace_window_run_each_missed_fire_at_most_once(
    cluster: Cluster, cluster_orm: Runtime
) -> None:
    trace = cluster.workdir / "s05.trace"
    jobs = [f"s05-{i}" for i in range(5)]
    async with cluster.client() as client:
        for job_id in jobs:
            await create_job(
                client, job_id, type="rel_traced", schedule="@every 1s", payload={"seconds": 0.05, "trace": str(trace)}
            )
    await wait_for(lambda: _each_ran(jobs), timeout=15)
    for worker in cluster.workers:
        worker.signal(signal.SIGKILL)
        worker.wait(5)
    down_at = datetime.now(UTC)
    await asyncio.sleep(GRACE * 2)
    cluster.workers[0].start()
    up_at = datetime.now(UTC)
    try:
        await asyncio.sleep(4.0)
        await _disable(cluster, *jobs)
        runs = await Run.filter(job_id__in=jobs, fire_at__isnull=False)
        duplicates = [k for k, n in Counter((r.job_id, r.fire_at) for r in runs).items() if n > 1]
        missed_window = {j: [r for r in runs if r.job_id == j and down_at < r.fire_at < up_at] for j in jobs}
        burst = {
            j: sum(1 for r in runs if r.job_id == j and up_at <= r.started_at < up_at + timedelta(seconds=2))
            for j in jobs
        }
        figure(
            "S5",
            outage_s=(up_at - down_at).total_seconds(),
            grace_s=GRACE,
            catch_up_runs={j: len(v) for j, v in missed_window.items()},
            runs_in_first_2s=burst,
        )
        assert duplicates == []
        assert all(len(v) <= 1 for v in missed_window.values()), missed_window
        # One catch-up plus the regular fires of those two seconds, never the whole missed backlog.
        assert all(n <= 4 for n in burst.values()), burst
        assert all(any(r.job_id == j and r.started_at > up_at for r in runs) for j in jobs), "schedule did not resume"
    finally:
        await asyncio.to_thread(_start_all, cluster)


async def _each_ran(jobs: list[str]) -> bool:
    return len(set(await Run.filter(job_id__in=jobs).values_list("job_id", flat=True))) == len(jobs)


async def test_s07_a_hundred_concurrent_triggers_from_two_apis_run_the_job_once(
    cluster: Cluster, cluster_orm: Runtime
) -> None:
    async with cluster.client() as client:
        await create_job(client, "s07", type="rel_traced", payload={"seconds": 3.0})
    limits = httpx.Limits(max_connections=60)
    async with cluster.client(0, limits=limits) as a, cluster.client(1, limits=limits) as b:
        started = time.monotonic()
        responses = await asyncio.gather(*((a, b)[i % 2].post("/api/jobs/s07/trigger") for i in range(100)))
        took = time.monotonic() - started
    codes = Counter(r.status_code for r in responses)
    errors = Counter(r.json()["error"] for r in responses if r.status_code == 409)

    async def finished() -> bool:
        return await Run.filter(job_id="s07", completed_at__isnull=False).exists()

    await wait_for(finished, timeout=20)
    await asyncio.sleep(1.0)
    runs = await Run.filter(job_id="s07").count()
    figure("S7", ok=codes[200], conflict=codes[409], runs=runs, burst_s=took)
    assert codes == {200: 1, 409: 99}
    assert errors == {"already_running": 99}
    assert runs == 1
