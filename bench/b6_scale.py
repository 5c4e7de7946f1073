"""B6: scale. 10,000 jobs: the start-up reconcile, `GET /api/jobs`, memory of the API and a worker.
1,000,000 run rows (quick: 200,000): `cleanup-job-logs` prunes them while the API keeps answering reads;
the longest read during the prune is what "blocking" means here.

`python -m bench.b6_scale` runs it all; the reconcile is timed in a child process
(`python -m bench.b6_scale reconcile DATABASE_URL REDIS_URL`) that sets up the ORM the way a worker does.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from redis import Redis

from bench import common
from bench.common import CpuMeter, SqlDb, Stack, figure, percentile, pick
from bench.job_types import PROBE_TYPE

JOBS = pick(smoke=500, quick=10_000, full=10_000)
RUNS = pick(smoke=20_000, quick=200_000, full=1_000_000)
REPS = 3
LIST_REQUESTS = pick(smoke=3, quick=10, full=30)
SCHEDULES = ("@every 1h", "0 * * * *", "*/30 * * * *", "@daily", "15 3 * * 1")


async def reconcile_once(database_url: str, redis_url: str) -> float:
    from tortoise import Tortoise

    from app.engine import scheduler
    from app.platform import db
    from app.platform.redis_pool import connect_redis
    from app.platform.runtime import Runtime

    settings = common.bench_settings(database_url=database_url, redis_url=redis_url)
    await Tortoise.init(config=db.tortoise_config(settings), _enable_global_fallback=True)
    redis = await connect_redis(settings)
    try:
        t0 = time.perf_counter()
        count = await scheduler.reconcile_all(Runtime(settings=settings, redis=redis))
        took = time.perf_counter() - t0
        assert count >= JOBS, count
        return took
    finally:
        await redis.aclose()
        await Tortoise.close_connections()


def timed_reconcile(url: str, redis_url: str) -> float:
    out = subprocess.run(
        [sys.executable, "-m", "bench.b6_scale", "reconcile", url, redis_url],
        cwd=common.ROOT,
        env=common.child_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


async def reset_schedules(url: str, redis_url: str) -> None:
    async with SqlDb(url) as db:
        await db.execute("UPDATE job SET next_run_at = NULL")
    client = Redis.from_url(redis_url)
    client.flushdb()
    client.close()


# What happens to the job table between two lists: the three costs of `GET /api/jobs` (README, "Scaling out").
NOTHING = "nothing committed"  # SQLite: the rows read before are reused
ONE_CHANGED = "one job changed"  # as after a run: the rows are read again, the other jobs' JSON is reused
ALL_CHANGED = "every job changed"  # everything is built again
BETWEEN_LISTS = {
    NOTHING: None,
    ONE_CHANGED: "UPDATE job SET last_duration_ms = ? WHERE id = 'e00000'",
    ALL_CHANGED: "UPDATE job SET last_duration_ms = ?",
}


async def list_latencies(api_url: str, token: str, n: int, url: str, between: str) -> tuple[list[float], int]:
    statement = BETWEEN_LISTS[between]
    async with (
        httpx.AsyncClient(base_url=api_url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as c,
        SqlDb(url) as db,
    ):
        r = await c.get("/api/jobs")
        size = len(r.content)
        out = []
        for i in range(n):
            if statement is not None:
                await db.execute(statement, i)
            t0 = time.perf_counter()
            r = await c.get("/api/jobs")
            out.append((time.perf_counter() - t0) * 1000)
            assert r.status_code == 200
            if statement is not None:
                changed = next(job for job in r.json() if job["id"] == "e00000")
                assert changed["lastDuration"] == i, "the list must show the change"
        return out, size


async def seed_runs(url: str, n: int) -> None:
    """n completed runs of one job, 90 % of them past the 30-day retention; bulk SQL, not the API."""
    old = datetime.now(UTC) - timedelta(days=60)
    new = datetime.now(UTC) - timedelta(days=1)
    async with SqlDb(url) as db:
        chunk = 50_000
        for start in range(0, n, chunk):
            rows = []
            for i in range(start, min(n, start + chunk)):
                at = (old if i < n * 0.9 else new) + timedelta(seconds=i)
                rows.append(("e00000", f"seed-{i}", 1, "scheduler", at, at, at, 1, "success", "seeded"))
            await db.executemany(
                "INSERT INTO job_run (job_id, token, attempt, triggered_by, fire_at, started_at, completed_at, "
                "duration_ms, result, details) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )


async def prune_under_reads(api_url: str, token: str, url: str) -> tuple[list[float], float, int, int]:
    """Trigger cleanup-job-logs, read the logs API until the prune is done: (read ms, prune s, before, after)."""
    async with SqlDb(url) as db:
        before = int((await db.fetch("SELECT COUNT(*) FROM job_run"))[0][0])
    reads: list[float] = []
    async with httpx.AsyncClient(base_url=api_url, headers={"Authorization": f"Bearer {token}"}, timeout=120) as c:
        t0 = time.perf_counter()
        r = await c.post("/api/jobs/cleanup-job-logs/trigger")
        assert r.status_code == 200, r.text
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            t1 = time.perf_counter()
            r = await c.get("/api/jobs/logs/all", params={"limit": 20})
            reads.append((time.perf_counter() - t1) * 1000)
            job = (await c.get("/api/jobs/cleanup-job-logs")).json()
            if not job["running"] and job["lastResult"] is not None:
                break
            await asyncio.sleep(0.01)
        took = time.perf_counter() - t0
        assert job["lastResult"] == "success", job
    async with SqlDb(url) as db:
        after = int((await db.fetch("SELECT COUNT(*) FROM job_run"))[0][0])
    return reads, took, before, after


def one_statement_delete(url: str) -> float:
    """What the former single DELETE held the database for (on a copy, so the real prune still has work)."""
    import shutil
    import sqlite3

    path = url.removeprefix("sqlite://").split("?")[0]
    copy = path + ".copy"
    shutil.copyfile(path, copy)
    conn = sqlite3.connect(copy, isolation_level=None)
    try:
        cutoff = datetime.now(UTC) - timedelta(days=30)
        t0 = time.perf_counter()
        conn.execute("DELETE FROM job_run WHERE completed_at < ?", (cutoff,))
        return time.perf_counter() - t0
    finally:
        conn.close()


def main() -> None:
    figures: list[dict[str, Any]] = []
    with Stack("bench-b6-") as st:
        r = st.redis()
        url = common.migrated_sqlite(st.workdir / "scale")
        ids = [f"e{i:05d}" for i in range(JOBS)]

        async def insert() -> None:
            async with SqlDb(url) as db:
                for n, schedule in enumerate(SCHEDULES):
                    part = ids[n :: len(SCHEDULES)]
                    await db.insert_jobs(part, job_type=PROBE_TYPE, schedule=schedule, enabled=True)

        asyncio.run(insert())
        cold, warm = [], []
        for _ in range(REPS):
            asyncio.run(reset_schedules(url, r.url))
            cold.append(timed_reconcile(url, r.url))
            warm.append(timed_reconcile(url, r.url))
            print(f"  reconcile of {JOBS} jobs: first {cold[-1]:.2f} s, again {warm[-1]:.2f} s", flush=True)
        figures += [
            figure(f"start-up reconcile, {JOBS} jobs never scheduled", "s", cold, target="≤ 5", met=max(cold) <= 5),
            figure(f"start-up reconcile, {JOBS} jobs already scheduled", "s", warm, target="≤ 5", met=max(warm) <= 5),
        ]

        settings = common.bench_settings(database_url=url, redis_url=r.url, embedded_worker=True)
        token = common.token_for(settings)
        api = st.api(settings, name="api")
        worker = st.worker(common.bench_settings(database_url=url, redis_url=r.url, embedded_worker=False))
        for between in BETWEEN_LISTS:
            lists = [asyncio.run(list_latencies(api.url, token, LIST_REQUESTS, url, between)) for _ in range(REPS)]
            size = lists[0][1]
            p50 = [percentile(x, 50) for x, _ in lists]
            figures += [
                figure(f"GET /api/jobs with {JOBS} jobs ({size / 1e6:.1f} MB), {between}: p50", "ms", p50),
                figure(f"GET /api/jobs with {JOBS} jobs, {between}: p99", "ms", [percentile(x, 99) for x, _ in lists]),
            ]
        assert api.proc is not None and worker.proc is not None
        figures += [
            figure(f"API RSS (embedded worker) with {JOBS} jobs", "MB", [CpuMeter(api.proc.pid).rss_mb()]),
            figure(f"worker RSS with {JOBS} jobs", "MB", [CpuMeter(worker.proc.pid).rss_mb()]),
        ]
        worker.stop()

        t0 = time.perf_counter()
        asyncio.run(seed_runs(url, RUNS))
        seeded = time.perf_counter() - t0
        print(f"  seeded {RUNS} runs in {seeded:.1f} s", flush=True)
        single = one_statement_delete(url)
        reads, took, before, after = asyncio.run(prune_under_reads(api.url, token, url))
        print(f"  pruned {before - after} of {before} runs in {took:.1f} s; {len(reads)} reads meanwhile", flush=True)
        thirds = [reads[i::REPS] for i in range(REPS)]
        longest = [max(t) for t in thirds if t]
        figures += [
            figure(f"cleanup-job-logs: {before - after:,} of {before:,} runs pruned in", "s", [took]),
            figure("longest API read while pruning", "ms", longest, target="≤ 100", met=max(longest) <= 100),
            figure("API read p50 while pruning", "ms", [percentile(t, 50) for t in thirds if t]),
            figure("one DELETE statement for the same rows (the former prune)", "s", [single], baseline=True),
        ]
    notes = (
        f"SQLite; {JOBS} enabled jobs over {len(SCHEDULES)} schedules inserted with bulk SQL; the reconcile is "
        f"timed inside a fresh process (ORM and Redis set up as a worker does), first with nothing scheduled, then "
        f"again. {RUNS:,} completed runs seeded with bulk SQL, 90 % past the 30-day retention; the prune runs "
        f"on the API's embedded worker, which shares its database connection with the API's reads (the worst "
        f"case), while a client reads `GET /api/jobs/logs/all?limit=20` in a loop."
    )
    common.write_result("b6_scale", "B6 scale: 10,000 jobs, 1,000,000 runs", figures, notes=notes)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "reconcile":
        print(json.dumps(asyncio.run(reconcile_once(sys.argv[2], sys.argv[3]))))
    else:
        main()
