"""B3: REST reads — `GET /api/jobs` (20 jobs) under wrk, and the run logs with 1,000,000 run rows.

One `uvicorn app.main:app` process (no embedded worker: an API instance as the README scales them out),
on SQLite, with a bearer token. Baseline in the same run: a bare FastAPI app serving the same JSON through
`response_model` behind the same JWT dependency (bench/rest_baseline.py), under the same uvicorn command.
`wrk -t2 -c50` for throughput and p99, `wrk -t1 -c1` for the latency of one client at a time.
The run logs are read at offset 0 and offset 500,000 of 1,000,000 runs (600,000 of them in one job).
"""

from __future__ import annotations

import json
import re
import sqlite3
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from bench import common
from bench.common import Stack, figure, pick

JOBS = 20
RUNS = pick(smoke=20_000, quick=1_000_000, full=1_000_000)
DEEP = RUNS // 2
HOT = "bench-hot"  # 60 % of the runs: its log has a page at offset RUNS / 2
DURATION = pick(smoke=1, quick=3, full=10)
ONE_DURATION = pick(smoke=1, quick=2, full=5)
REPS = pick(smoke=1, quick=3, full=3)  # smoke mode only checks that the script still works
LOG_REPS = pick(smoke=1, quick=3, full=3)  # smoke mode only checks that the pages answer
WRK = "wrk"
_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def wrk(url: str, token: str, *, connections: int, threads: int, duration: int) -> dict[str, float]:
    """requests/s, p50 and p99 (ms) of one wrk run; fails on any non-2xx answer or socket error."""
    # A slow answer is a measurement, not a failure: wrk's 2 s default timeout would drop it from the figures.
    argv = [WRK, f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency", "--timeout", "30s"]
    argv += ["-H", f"Authorization: Bearer {token}", url]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30, check=True).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk saw errors on {url}:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]

    def pct(p: str) -> float:
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
        assert m is not None, out
        return float(m.group(1)) * _UNITS[m.group(2)]

    return {"rps": rps, "p50": pct("50"), "p99": pct("99")}


def create_jobs(api_url: str, token: str) -> list[dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=api_url, headers=headers, timeout=30) as client:
        existing = len(client.get("/api/jobs").json())
        for i in range(JOBS - existing):
            job_id = HOT if i == 0 else f"bench-job-{i}"
            body = {"id": job_id, "name": f"Bench {i}", "description": "B3", "type": "bench_probe"}
            r = client.post("/api/jobs", json={**body, "schedule": "0 0 1 1 *", "enabled": i % 2 == 0})
            assert r.status_code == 201, r.text
        jobs: list[dict[str, Any]] = client.get("/api/jobs").json()
    assert len(jobs) == JOBS, len(jobs)
    return jobs


def ids_at_depth(db_file: Path, depth: int) -> tuple[int, int]:
    """The `before` that starts the page at `depth`, newest first: of all runs, and of the hot job's."""
    con = sqlite3.connect(db_file, timeout=30)
    try:
        [(every,)] = con.execute("SELECT id FROM job_run ORDER BY id DESC LIMIT 1 OFFSET ?", (depth - 1,)).fetchall()
        [(hot,)] = con.execute(
            "SELECT id FROM job_run WHERE job_id = ? ORDER BY id DESC LIMIT 1 OFFSET ?", (HOT, depth - 1)
        ).fetchall()
    finally:
        con.close()
    return int(every), int(hot)


def seed_runs(db_file: Path, n: int) -> float:
    """n finished runs in one INSERT … SELECT (seconds taken): 60 % in HOT, the rest over 19 jobs."""
    started = time.monotonic()
    con = sqlite3.connect(db_file, timeout=30)
    try:
        # A bulk load: the per-row counting trigger is dropped for the insert, and the counters rebuilt after.
        (trigger,) = con.execute("SELECT sql FROM sqlite_master WHERE name = 'job_run_counted'").fetchone()
        con.execute("DROP TRIGGER job_run_counted")
        con.execute(
            """WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?)
            INSERT INTO job_run (job_id, token, attempt, triggered_by, fire_at, started_at, completed_at,
                                 duration_ms, result, details)
            SELECT CASE WHEN x % 10 < 6 THEN ? ELSE 'bench-job-' || (1 + x % 19) END, 'seed-' || x, 1,
                   'scheduler', NULL, '2026-01-01 00:00:00.000000+00:00', '2026-01-01 00:00:01.000000+00:00',
                   1000, 'success', 'Seeded run ' || x
            FROM c""",
            (n, HOT),
        )
        con.execute("DELETE FROM job_run_count")
        con.execute("INSERT INTO job_run_count (job_id, runs) SELECT job_id, COUNT(*) FROM job_run GROUP BY job_id")
        con.execute(trigger)
        con.commit()
    finally:
        con.close()
    return time.monotonic() - started


def main() -> None:
    list_runs: dict[str, list[dict[str, float]]] = {"api": [], "baseline": [], "api1": [], "baseline1": [], "api4": []}
    log_runs: dict[str, list[dict[str, float]]] = {}
    with Stack("bench-b3-") as st:
        redis = st.redis()
        url = common.migrated_sqlite(st.workdir / "db")
        settings = common.bench_settings(database_url=url, redis_url=redis.url, embedded_worker=False)
        token = common.token_for(settings)
        api = st.api(settings)
        jobs = create_jobs(api.url, token)
        seconds = seed_runs(st.workdir / "db" / "jobs.sqlite3", RUNS)
        print(f"seeded {RUNS:,} runs in {seconds:.1f} s", flush=True)
        jobs_json = st.workdir / "jobs.json"
        jobs_json.write_text(json.dumps(jobs))
        port = common.free_port()
        env = common.child_env(BENCH_JOBS_JSON=jobs_json, JWT_SECRET=common.SECRET, APP_ENV="test")
        argv = [str(common.ROOT / ".venv/bin/uvicorn"), "bench.rest_baseline:app", "--host", "127.0.0.1"]
        base = st.popen([*argv, "--port", str(port)], "baseline", env)
        base_url = f"http://127.0.0.1:{port}"
        _wait_up(base_url, token, base)
        targets = {"api": f"{api.url}/api/jobs", "baseline": f"{base_url}/api/jobs"}
        # Same answer from both, byte for byte after parsing.
        h = {"Authorization": f"Bearer {token}"}
        assert httpx.get(targets["api"], headers=h).json() == httpx.get(targets["baseline"], headers=h).json()
        for target in targets.values():  # warm-up
            wrk(target, token, connections=10, threads=1, duration=1)
        for _ in range(REPS):
            for name, target in targets.items():
                list_runs[name].append(wrk(target, token, connections=50, threads=2, duration=DURATION))
                if name == "api":  # more connections must not mean fewer requests served (they once did)
                    list_runs["api4"].append(wrk(target, token, connections=4, threads=2, duration=DURATION))
                list_runs[name + "1"].append(wrk(target, token, connections=1, threads=1, duration=ONE_DURATION))
        # Deep pages by keyset: offsets stop at 10,000 (app.platform.pagination.MAX_OFFSET).
        deep_all, deep_hot = ids_at_depth(st.workdir / "db" / "jobs.sqlite3", DEEP)
        pages = {
            "all runs, limit 200, offset 0": "/api/jobs/logs/all?limit=200",
            f"all runs, limit 200, before the run at depth {DEEP:,}": f"/api/jobs/logs/all?limit=200&before={deep_all}",
            f"one job ({int(RUNS * 0.6):,} runs), default limit 50, offset 0": f"/api/jobs/{HOT}/logs",
            f"one job, default limit 50, before the run at depth {DEEP:,}": f"/api/jobs/{HOT}/logs?before={deep_hot}",
            "one job, default limit 50, offset 10,000 (the deepest offset)": f"/api/jobs/{HOT}/logs?offset=10000",
        }
        for label, path in pages.items():
            page = httpx.get(api.url + path, headers=h, timeout=30).json()
            assert page["total"] >= RUNS * 0.6 and len(page["logs"]) > 0, page
            log_runs[label] = [
                wrk(api.url + path, token, connections=1, threads=1, duration=ONE_DURATION) for _ in range(LOG_REPS)
            ]
    write(list_runs, log_runs, seconds)


def _wait_up(url: str, token: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the baseline app exited")
        try:
            if httpx.get(f"{url}/api/jobs", headers={"Authorization": f"Bearer {token}"}).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError("the baseline app did not start")


def write(lists: dict[str, list[dict[str, float]]], logs: dict[str, list[dict[str, float]]], seeded: float) -> Path:
    def col(name: str, key: str) -> list[float]:
        return [r[key] for r in lists[name]]

    def med(values: list[float]) -> float:
        return statistics.median(values)

    share = [a / b for a, b in zip(col("api", "rps"), col("baseline", "rps"), strict=True)]
    p99_ratio = [a / b for a, b in zip(col("api", "p99"), col("baseline", "p99"), strict=True)]
    figures = [
        figure("GET /api/jobs, 50 connections: jobs-gateway", "req/s", col("api", "rps")),
        figure(
            "GET /api/jobs, 50 connections: bare FastAPI + response_model",
            "req/s",
            col("baseline", "rps"),
            baseline=True,
        ),
        figure(
            "jobs-gateway req/s ÷ baseline req/s", "%", [100 * s for s in share], target="≥ 60", met=med(share) >= 0.6
        ),
        figure("GET /api/jobs, 4 connections: jobs-gateway", "req/s", col("api4", "rps")),
        figure(
            "jobs-gateway req/s at 50 connections ÷ at 4",
            "%",
            [100 * a / b for a, b in zip(col("api", "rps"), col("api4", "rps"), strict=True)],
        ),
        figure("GET /api/jobs, 50 connections: jobs-gateway p50", "ms", col("api", "p50")),
        figure("GET /api/jobs, 50 connections: jobs-gateway p99", "ms", col("api", "p99")),
        figure("GET /api/jobs, 50 connections: baseline p99", "ms", col("baseline", "p99"), baseline=True),
        figure("jobs-gateway p99 ÷ baseline p99", "×", p99_ratio, target="≤ 2", met=med(p99_ratio) <= 2),
        figure(
            "GET /api/jobs, 1 connection: jobs-gateway p50",
            "ms",
            col("api1", "p50"),
            target="≤ 2",
            met=med(col("api1", "p50")) <= 2,
        ),
        figure("GET /api/jobs, 1 connection: jobs-gateway p99", "ms", col("api1", "p99")),
        figure("GET /api/jobs, 1 connection: baseline p50", "ms", col("baseline1", "p50"), baseline=True),
    ]
    for label, runs in logs.items():
        p50 = [r["p50"] for r in runs]
        shallow = "offset 0" in label
        figures.append(
            figure(
                f"run logs, {label}: p50",
                "ms",
                p50,
                target="≤ 10" if shallow else None,
                met=med(p50) <= 10 if shallow else None,
            )
        )
        figures.append(figure(f"run logs, {label}: p99", "ms", [r["p99"] for r in runs]))
    notes = (
        f"wrk {DURATION} s per run at 50 and at 4 connections (2 threads) and {ONE_DURATION} s at 1 connection, "
        f"{REPS} repetitions alternating jobs-gateway and the baseline; each figure the median of the repetitions "
        f"(min–max). The 1,000,000 runs were inserted with one INSERT … SELECT in {seeded:.1f} s (the counting "
        "trigger dropped for the bulk load and the counters rebuilt after it).\n\n"
        "Why the ratio is what it is, where the time goes and what was changed: bench/NOTES.md, B3.\n\n"
        "Deep pages: offsets stop at 10,000 (an offset walks that many index entries: 40 ms at 500,000); the "
        "keyset cursor (`before=<run id>`, each page's `nextBefore`) reaches any depth at the cost of the first page."
    )
    return common.write_result("b3_rest", "B3 REST reads", figures, notes=notes)


if __name__ == "__main__":
    main()
