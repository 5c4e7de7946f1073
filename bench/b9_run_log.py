"""B9 (part): what keeping a run's log costs the run. The same handler (10,000 steps of about 0.1 ms each: hashing
128 KiB, awaiting every 100 steps)
runs without logging, with 1,000 lines (all kept), with 10,000 lines (1,000 kept, the rest dropped) and with 10,000
progress reports, on a standalone `jobs-gateway worker` with SQLite (and PostgreSQL in full mode). Each run's
duration is its record's, from its start to its close, so the last flush of its lines is inside it.

The variants alternate within each repetition (the machine's drift touches them alike); the verdict is the ratio
of each median to the median of the run that does not log, measured in the same script.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import httpx

from bench import common
from bench.common import Stack, figure, pick
from bench.job_types import WORK_TYPE

STEPS = 10_000
REPS = pick(smoke=2, quick=7, full=15)
VARIANTS: dict[str, dict[str, int]] = {
    "no log": {},
    "1,000 lines": {"log_every": 10},
    "10,000 lines": {"log_every": 1},
    "10,000 progress reports": {"progress_every": 1},
}
TARGET_RATIO = 1.10  # issue 30's B9: a run writing 10,000 log lines at most 10 % slower than the same run silent


async def run_once(client: httpx.AsyncClient, job_id: str) -> float:
    """Trigger the job and return its run's duration in ms, once it is closed."""
    response = await client.post(f"/api/jobs/{job_id}/trigger")
    assert response.status_code == 200, response.text
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        logs = (await client.get(f"/api/jobs/{job_id}/logs", params={"limit": 1})).json()["logs"]
        if logs and logs[0]["completedAt"] is not None:
            run = logs[0]
            assert run["result"] == "success", run
            # The job is free again once its lease is released, a moment after the record is closed.
            while (await client.get(f"/api/jobs/{job_id}")).json()["running"]:  # noqa: ASYNC110 - polling the API
                await asyncio.sleep(0.01)
            return float(run["duration"])
        await asyncio.sleep(0.02)
    raise TimeoutError(f"{job_id} did not finish")


async def measure(api_url: str, token: str) -> dict[str, list[float]]:
    headers = {"Authorization": f"Bearer {token}"}
    durations: dict[str, list[float]] = {name: [] for name in VARIANTS}
    async with httpx.AsyncClient(base_url=api_url, headers=headers, timeout=30) as client:
        for i, (name, knobs) in enumerate(VARIANTS.items()):
            body = {
                "id": f"work-{i}",
                "name": name,
                "type": WORK_TYPE,
                "schedule": "0 0 1 1 *",
                "payload": {"steps": STEPS, **knobs},
            }
            response = await client.post("/api/jobs", json=body)
            assert response.status_code == 201, response.text
        for i in range(len(VARIANTS)):  # warm-up: imports, caches, the first transaction of each kind
            await run_once(client, f"work-{i}")
        for rep in range(REPS):
            order = list(enumerate(VARIANTS))
            if rep % 2:
                order.reverse()
            for i, name in order:
                durations[name].append(await run_once(client, f"work-{i}"))
            print(f"  rep {rep + 1}: " + ", ".join(f"{n} {d[-1]:.0f} ms" for n, d in durations.items()), flush=True)
    return durations


def figures_of(backend: str, durations: dict[str, list[float]]) -> list[dict[str, Any]]:
    silent = statistics.median(durations["no log"])
    out = [figure(f"{backend}: run of {STEPS:,} steps, no log", "ms", durations["no log"], baseline=True)]
    for name in list(VARIANTS)[1:]:
        out.append(figure(f"{backend}: the same run, {name}", "ms", durations[name]))
        ratios = [d / silent for d in durations[name]]
        met = statistics.median(ratios) <= TARGET_RATIO
        out.append(figure(f"{backend}: {name} ÷ no log", "×", ratios, target=f"≤ {TARGET_RATIO:g}", met=met))
        # What one call costs the run: each repetition's extra time over the silent median, per call.
        calls = STEPS // max(VARIANTS[name].values())
        per_call = [max(0.0, d - silent) * 1000 / calls for d in durations[name]]
        out.append(figure(f"{backend}: {name}, cost per call", "µs", per_call))
    return out


def bench(backend: str, stack: Stack, redis_url: str) -> list[dict[str, Any]]:
    if backend == "SQLite":
        url = common.migrated_sqlite(stack.workdir / "sqlite")
    else:
        url = common.migrated_postgres(stack.postgres(), "b9")
    settings = common.bench_settings(database_url=url, redis_url=redis_url, embedded_worker=False)
    api = stack.api(settings, name=f"api-{backend}")
    stack.worker(settings, name=f"worker-{backend}")
    print(f"B9 run log overhead, {backend}: {REPS} repetitions of {len(VARIANTS)} variants", flush=True)
    return figures_of(backend, asyncio.run(measure(api.url, common.token_for(settings))))


def main() -> None:
    figures: list[dict[str, Any]] = []
    backends = ["SQLite", "PostgreSQL"] if common.mode() == "full" else ["SQLite"]
    for backend in backends:
        with Stack() as stack:
            redis = stack.redis()
            figures += bench(backend, stack, redis.url)
    common.write_result(
        "b9_run_log",
        "B9 run log overhead",
        figures,
        notes="Durations are the run records' (start to close: the last flush of the log is inside). Each "
        "repetition runs the four variants one after another, in alternating order.",
    )


if __name__ == "__main__":
    main()
