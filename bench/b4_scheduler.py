"""B4: scheduler precision and idle cost.

200 jobs on `@every 1s` for 60 s (quick: 20 s) on 2 `jobs-gateway worker` processes and 2 API instances:
fire lag (scheduled fire time → the handler's first line) p50/p99/max, duplicates and misses. Baseline in the
same run: arq's own `cron` running 200 functions every second on 2 arq workers. Then 1,000 enabled jobs
whose next fire is an hour away: CPU of one API plus one worker while idle (windows long enough to include
the periodic reconcile).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from redis import Redis

from bench import common
from bench.arq_baseline import CRON_LOG_KEY
from bench.common import CpuMeter, SqlDb, Stack, figure, parse_ts, percentile, pick
from bench.job_types import PROBE_TYPE

JOBS = pick(smoke=20, quick=200, full=200)
DURATION = pick(smoke=3.0, quick=20.0, full=60.0)
IDLE_JOBS = pick(smoke=100, quick=1000, full=1000)
# Three windows: together they cover at least one periodic reconcile (every 30 s) in quick mode.
IDLE_WINDOW = pick(smoke=0.5, quick=10.5, full=20.0)
REPS = 3
# The first seconds after start-up are excluded (reconcile, first fires).
SETTLE = pick(smoke=2.0, quick=3.0, full=3.0)
PAIRS = pick(smoke=1, quick=2, full=2)  # workers and API instances (smoke: one of each, to stay quick)


def product_fires(st: Stack, url: str, label: str) -> tuple[list[list[float]], int, int, int]:
    """(lags in ms per third of the window, duplicates, misses, fires expected)."""
    r = st.redis()
    ids = [f"e{i:04d}" for i in range(JOBS)]
    asyncio.run(_insert(url, ids, "@every 1s"))
    settings = common.bench_settings(database_url=url, redis_url=r.url, embedded_worker=False)
    workers = [st.worker(settings, name=f"{label}-w{i}") for i in range(PAIRS)]
    apis = [st.api(settings, name=f"{label}-api{i}") for i in range(PAIRS)]
    start = time.time()
    time.sleep(SETTLE + DURATION + 1.5)
    for p in [*apis, *workers]:
        p.stop()
    window = (float(int(start + SETTLE)) + 1, float(int(start + SETTLE + DURATION)) + 1)
    rows = asyncio.run(_runs(url))
    fires = [(job, parse_ts(fire)) for job, fire, _ in rows]
    in_window = [(job, fire, float(details)) for (job, fire), (_, _, details) in zip(fires, rows, strict=True)
                 if window[0] <= fire < window[1] and details]  # fmt: skip
    duplicates = sum(n - 1 for n in Counter((j, f) for j, f, _ in in_window).values() if n > 1)
    expected = JOBS * int(window[1] - window[0])
    misses = expected - len({(j, f) for j, f, _ in in_window})
    thirds = _thirds([(f, (h - f) * 1000) for _, f, h in in_window], window)
    return thirds, duplicates, misses, expected


async def _insert(url: str, ids: list[str], schedule: str) -> None:
    async with SqlDb(url) as db:
        await db.insert_jobs(ids, job_type=PROBE_TYPE, schedule=schedule, enabled=True)


async def _runs(url: str) -> list[tuple[Any, ...]]:
    async with SqlDb(url) as db:
        return await db.fetch("SELECT job_id, fire_at, details FROM job_run WHERE fire_at IS NOT NULL")


def _thirds(samples: list[tuple[float, float]], window: tuple[float, float]) -> list[list[float]]:
    """The window's lags split into REPS consecutive parts: the repetitions."""
    span = (window[1] - window[0]) / REPS
    parts: list[list[float]] = [[] for _ in range(REPS)]
    for fire, lag in samples:
        parts[min(REPS - 1, int((fire - window[0]) / span))].append(lag)
    return parts


def arq_cron(st: Stack) -> tuple[list[list[float]], int, int]:
    r = st.redis()
    env = common.child_env(BENCH_REDIS_URL=r.url, BENCH_CRON_JOBS=JOBS, BENCH_POLL_DELAY="0.5")
    arq = str(common.ROOT / ".venv/bin/arq")
    procs = [st.popen([arq, "bench.arq_baseline.WorkerSettings"], f"cron-{i}", env) for i in range(PAIRS)]
    start = time.time()
    time.sleep(SETTLE + DURATION + 1.5)
    for p in procs:
        p.terminate()
        p.wait(10)
    window = (float(int(start + SETTLE)) + 1, float(int(start + SETTLE + DURATION)) + 1)
    client = Redis.from_url(r.url)
    try:
        entries = [e.decode().split() for e in client.lrange(CRON_LOG_KEY, 0, -1)]  # type: ignore[union-attr]
    finally:
        client.close()
    samples = []
    for job_id, started in entries:
        scheduled = int(job_id.rsplit(":", 1)[1]) / 1000
        samples.append((job_id, scheduled, float(started)))
    in_window = [(j, s, h) for j, s, h in samples if window[0] <= s < window[1]]
    duplicates = sum(n - 1 for n in Counter(j for j, _, _ in in_window).values() if n > 1)
    misses = JOBS * int(window[1] - window[0]) - len({j for j, _, _ in in_window})
    return _thirds([(s, (h - s) * 1000) for _, s, h in in_window], window), duplicates, misses


def idle_cost(st: Stack) -> tuple[list[float], float]:
    """% of a core of one API + one worker with IDLE_JOBS jobs an hour away: per window, and overall."""
    r = st.redis()
    url = common.migrated_sqlite(st.workdir / "idle")
    at = datetime.now(UTC) + timedelta(hours=1)
    asyncio.run(_insert(url, [f"i{i:04d}" for i in range(IDLE_JOBS)], f"{at.minute} {at.hour} * * *"))
    settings = common.bench_settings(database_url=url, redis_url=r.url, embedded_worker=False)
    worker = st.worker(settings, name="idle-worker")
    api = st.api(settings, name="idle-api")
    time.sleep(2.0)
    assert worker.proc is not None and api.proc is not None
    meters = [CpuMeter(worker.proc.pid), CpuMeter(api.proc.pid)]
    overall = [CpuMeter(worker.proc.pid), CpuMeter(api.proc.pid)]
    for m in overall:
        m.start()
    windows = []
    for _ in range(REPS):
        for m in meters:
            m.start()
        time.sleep(IDLE_WINDOW)
        windows.append(sum(m.percent() for m in meters))
    total = sum(m.percent() for m in overall)
    api.stop()
    worker.stop()
    return windows, total


def main() -> None:
    with Stack("bench-b4-") as st:
        # PostgreSQL: two workers and two API instances are a multi-host deployment, which SQLite cannot serve.
        pg = common.mode() != "smoke" and common.postgres_unavailable_reason() is None
        url = common.migrated_postgres(st.postgres(), "bench_b4") if pg else common.migrated_sqlite(st.workdir / "b4")
        ours, dup, miss, expected = product_fires(st, url, "b4")
        lite = product_fires(st, common.migrated_sqlite(st.workdir / "b4-lite"), "b4-lite") if pg else None
        base, base_dup, base_miss = arq_cron(st)
        idle_windows, idle_total = idle_cost(st)

    def p(parts: list[list[float]], q: float) -> list[float]:
        return [percentile(x, q) if x else float("nan") for x in parts]

    def m(values: list[float]) -> float:
        return sorted(values)[len(values) // 2]

    base_p99 = m(p(base, 99))
    ours_p99 = m(p(ours, 99))
    figures = [
        figure("fire lag p50", "ms", p(ours, 50)),
        figure(
            "fire lag p99",
            "ms",
            p(ours, 99),
            target="≤ 50 and ≤ arq cron's",
            met=ours_p99 <= 50 and ours_p99 <= base_p99,
        ),
        figure("fire lag max", "ms", [max(x) if x else float("nan") for x in ours]),
        figure("duplicate runs", "runs", [dup], target="0", met=dup == 0),
        figure("missed fires", "fires", [miss], target="0", met=miss == 0),
    ]
    if lite is not None:
        figures += [
            figure("SQLite instead: fire lag p50", "ms", p(lite[0], 50)),
            figure(
                "SQLite instead: fire lag p99",
                "ms",
                p(lite[0], 99),
                target="≤ 50 and ≤ arq cron's",
                met=m(p(lite[0], 99)) <= min(50, base_p99),
            ),
            figure("SQLite instead: duplicate runs", "runs", [lite[1]], target="0", met=lite[1] == 0),
            figure("SQLite instead: missed fires", "fires", [lite[2]], target="0", met=lite[2] == 0),
        ]
    figures += [
        figure("arq cron: fire lag p50", "ms", p(base, 50), baseline=True),
        figure("arq cron: fire lag p99", "ms", p(base, 99), baseline=True),
        figure("arq cron: fire lag max", "ms", [max(x) if x else float("nan") for x in base], baseline=True),
        figure("arq cron: duplicates", "runs", [base_dup], baseline=True),
        figure("arq cron: missed fires", "fires", [base_miss], baseline=True),
        figure(f"idle API + worker, {IDLE_JOBS} jobs an hour away (per window)", "% of a core", idle_windows),
        figure(
            f"idle API + worker, {IDLE_JOBS} jobs an hour away (whole {REPS * IDLE_WINDOW:.0f} s)",
            "% of a core",
            [idle_total],
            target="< 2",
            met=idle_total < 2,
        ),
    ]
    backend = "PostgreSQL" if pg else "SQLite"
    notes = (
        f"{JOBS} jobs on @every 1s for {DURATION:.0f} s on 2 `jobs-gateway worker` processes and 2 API instances "
        f"(EMBEDDED_WORKER=false), {backend}, default settings; fires in the window after {SETTLE:.0f} s of start-up "
        f"({expected} expected); repetitions are the window's thirds. Lag = the handler's first line − the "
        f"scheduled fire time. arq cron: {JOBS} functions with second=0..59, microsecond=0, unique, 2 workers."
    )
    common.write_result("b4_scheduler", "B4 scheduler precision and idle cost", figures, notes=notes)


if __name__ == "__main__":
    main()
