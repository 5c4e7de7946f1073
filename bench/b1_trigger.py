"""B1: trigger → handler start, and an idle worker's cost.

`POST /api/jobs/{id}/trigger` sent → the handler's first line (the `bench_probe` handler returns
time.time() as its result), and → `running: false` with `lastResult` readable through the API, with the
embedded worker and with a separate `jobs-gateway worker`. Baselines in the same run: a Redis PING from the
same asyncio client (the floor), and plain arq `enqueue_job` → handler start at arq's default poll_delay and
at 0.005, whose idle cost is measured too.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
from arq.connections import RedisSettings, create_pool
from redis.asyncio import Redis

from app.engine.events import CHANNEL
from bench import common
from bench.common import CpuMeter, RedisCommandCounter, Stack, figure, percentile, pick
from bench.job_types import PROBE_TYPE

JOB = "probe"
TRIGGERS = pick(smoke=5, quick=60, full=300)
ARQ_DEFAULT_SAMPLES = pick(smoke=2, quick=10, full=40)
REPS = 3
IDLE_WINDOW = pick(smoke=0.5, quick=3.0, full=10.0)
GAP = 0.02  # between triggers: each one finds the worker asleep, as a real trigger would


async def create_probe(client: httpx.AsyncClient) -> None:
    body = {"id": JOB, "name": "Probe", "description": "B1", "type": PROBE_TYPE, "schedule": "0 0 1 1 *"}
    r = await client.post("/api/jobs", json={**body, "enabled": False})
    assert r.status_code == 201, r.text


class RawHttp:
    """A keep-alive HTTP/1.1 client that writes a request prepared in advance, as wrk does: "sent" is the moment
    its bytes are written. httpx spends about 0.7 to 1.5 ms of client CPU building and sending a request before
    its bytes leave (measured side by side below), which is no part of the service's latency."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, token: str) -> None:
        self._reader, self._writer, self._host, self._token = reader, writer, host, token

    @classmethod
    async def connect(cls, api_url: str, token: str) -> RawHttp:
        host = api_url.split("//", 1)[1].rstrip("/")
        name, port = host.rsplit(":", 1)
        reader, writer = await asyncio.open_connection(name, int(port))
        return cls(reader, writer, host, token)

    async def post(self, path: str) -> tuple[float, int]:
        """(when the request was written, by time.time(); the response status)."""
        request = (
            f"POST {path} HTTP/1.1\r\nHost: {self._host}\r\nAuthorization: Bearer {self._token}\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()
        sent = time.time()
        self._writer.write(request)
        head = await self._reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        length = next(int(line.split(b":", 1)[1]) for line in lines if line.lower().startswith(b"content-length:"))
        await self._reader.readexactly(length)
        return sent, int(lines[0].split()[1])

    async def close(self) -> None:
        self._writer.close()
        await self._writer.wait_closed()


async def trigger_latencies(
    api_url: str, token: str, redis_url: str, n: int
) -> tuple[list[float], list[float], list[float]]:
    """For n triggers sent as raw requests and n sent through httpx, alternately: (raw send → handler start,
    raw send → finished state readable through GET, httpx call → handler start), in ms."""
    headers = {"Authorization": f"Bearer {token}"}
    redis = Redis.from_url(redis_url)
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(CHANNEL)
    raw = await RawHttp.connect(api_url, token)
    started: list[float] = []
    readable: list[float] = []
    through_httpx: list[float] = []
    try:
        async with httpx.AsyncClient(base_url=api_url, headers=headers, timeout=10) as client:
            for i in range(n + 3):  # 3 warm-up rounds
                for kind in ("raw", "httpx"):
                    if kind == "raw":
                        sent, status = await raw.post(f"/api/jobs/{JOB}/trigger")
                    else:
                        sent = time.time()
                        status = (await client.post(f"/api/jobs/{JOB}/trigger")).status_code
                    assert status == 200, status
                    await _finished(pubsub)
                    job = (await client.get(f"/api/jobs/{JOB}")).json()
                    seen = time.time()
                    assert job["running"] is False and job["lastResult"] == "success", job
                    entry = (await client.get(f"/api/jobs/{JOB}/logs", params={"limit": 1})).json()["logs"][0]
                    if i >= 3:
                        latency = (float(entry["details"]) - sent) * 1000
                        if kind == "raw":
                            started.append(latency)
                            readable.append((seen - sent) * 1000)
                        else:
                            through_httpx.append(latency)
                    await asyncio.sleep(GAP)
    finally:
        await raw.close()
        await pubsub.aclose()
        await redis.aclose()
    return started, readable, through_httpx


async def _finished(pubsub: Any) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        message = await pubsub.get_message(timeout=1.0)
        if message is not None and json.loads(message["data"]).get("event") == "run.finished":
            return
    raise TimeoutError("no run.finished event within 10 s")


async def ping_latencies(redis_url: str, n: int) -> list[float]:
    redis = Redis.from_url(redis_url)
    try:
        await redis.ping()
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            await redis.ping()
            out.append((time.perf_counter() - t0) * 1000)
        return out
    finally:
        await redis.aclose()


async def arq_latencies(redis_url: str, n: int) -> list[float]:
    pool = await create_pool(RedisSettings.from_dsn(redis_url))
    try:
        out = []
        for _ in range(n + 2):
            sent = time.time()
            job = await pool.enqueue_job("noop")
            assert job is not None
            began = float(await job.result(timeout=10, poll_delay=0.002))
            out.append((began - sent) * 1000)
            await asyncio.sleep(GAP)
        return out[2:]
    finally:
        await pool.aclose()


def idle_cost(pid: int, redis_url: str) -> tuple[list[float], list[float]]:
    """(% of a core, Redis commands/s) over REPS idle windows."""
    cpu, commands = [], []
    counter = RedisCommandCounter(redis_url)
    meter = CpuMeter(pid)
    try:
        for _ in range(REPS):
            meter.start()
            counter.start()
            time.sleep(IDLE_WINDOW)
            cpu.append(meter.percent())
            commands.append(counter.rate())
    finally:
        counter.close()
    return cpu, commands


def reps_of(fn: Any, *args: Any) -> list[list[float]]:
    return [asyncio.run(fn(*args)) for _ in range(REPS)]


def main() -> None:
    figures: list[dict[str, Any]] = []
    notes: list[str] = []
    with Stack("bench-b1-") as st:
        # --- a separate worker process (`jobs-gateway worker`) and an API without one --------------------
        r1 = st.redis()
        db1 = common.migrated_sqlite(st.workdir / "separate")
        s1 = common.bench_settings(database_url=db1, redis_url=r1.url, log_level="INFO", embedded_worker=False)
        worker = st.worker(s1)
        time.sleep(1.5)  # past start-up: reconcile, first polls
        assert worker.proc is not None
        w_cpu, w_cmds = idle_cost(worker.proc.pid, r1.url)
        api1 = st.api(s1, name="api-separate")
        token = common.token_for(s1)
        asyncio.run(_create(api1.url, token))
        sep = [asyncio.run(trigger_latencies(api1.url, token, r1.url, TRIGGERS)) for _ in range(REPS)]
        pings = reps_of(ping_latencies, r1.url, 200)

        # --- the API's embedded worker ------------------------------------------------------------------
        r2 = st.redis()
        db2 = common.migrated_sqlite(st.workdir / "embedded")
        s2 = common.bench_settings(database_url=db2, redis_url=r2.url, log_level="INFO", embedded_worker=True)
        api2 = st.api(s2, name="api-embedded")
        time.sleep(1.5)
        assert api2.proc is not None
        e_cpu, e_cmds = idle_cost(api2.proc.pid, r2.url)
        asyncio.run(_create(api2.url, token))
        emb = [asyncio.run(trigger_latencies(api2.url, token, r2.url, TRIGGERS)) for _ in range(REPS)]

        # --- plain arq at poll_delay 0.005 and at its default 0.5 ---------------------------------------
        r3 = st.redis()
        env = common.child_env(BENCH_REDIS_URL=r3.url, BENCH_POLL_DELAY="0.005")
        fast = st.popen([str(common.ROOT / ".venv/bin/arq"), "bench.arq_baseline.WorkerSettings"], "arq-fast", env)
        time.sleep(1.5)
        a_cpu, a_cmds = idle_cost(fast.pid, r3.url)
        arq_fast = reps_of(arq_latencies, r3.url, TRIGGERS)
        fast.terminate()
        fast.wait(10)
        env = common.child_env(BENCH_REDIS_URL=r3.url, BENCH_POLL_DELAY="0.5")
        st.popen([str(common.ROOT / ".venv/bin/arq"), "bench.arq_baseline.WorkerSettings"], "arq-default", env)
        time.sleep(1.5)
        arq_default = reps_of(arq_latencies, r3.url, ARQ_DEFAULT_SAMPLES)

    def p(runs: list[list[float]], q: float) -> list[float]:
        return [percentile(r, q) for r in runs]

    for label, data in (("separate worker", sep), ("embedded worker", emb)):
        started = [d[0] for d in data]
        readable = [d[1] for d in data]
        through_httpx = [d[2] for d in data]
        p50, p99 = p(started, 50), p(started, 99)
        figures += [
            figure(f"{label}: trigger → handler start p50", "ms", p50, target="≤ 3", met=_med(p50) <= 3),
            figure(f"{label}: trigger → handler start p99", "ms", p99, target="≤ 10", met=_med(p99) <= 10),
            figure(f"{label}: trigger → finished state readable p50", "ms", p(readable, 50)),
            figure(f"{label}: trigger → finished state readable p99", "ms", p(readable, 99)),
            figure(f"{label}: httpx call → handler start p50 (client CPU included)", "ms", p(through_httpx, 50)),
            figure(f"{label}: httpx call → handler start p99 (client CPU included)", "ms", p(through_httpx, 99)),
        ]
    figures += [
        figure("idle standalone worker CPU", "% of a core", w_cpu, target="≤ 1", met=_med(w_cpu) <= 1),
        figure("idle standalone worker Redis commands", "cmd/s", w_cmds, target="≤ 20", met=_med(w_cmds) <= 20),
        figure("idle API + embedded worker CPU", "% of a core", e_cpu, target="≤ 1", met=_med(e_cpu) <= 1),
        figure("idle API + embedded worker Redis commands", "cmd/s", e_cmds, target="≤ 20", met=_med(e_cmds) <= 20),
        figure("Redis PING round trip p50 (floor)", "ms", p(pings, 50), baseline=True),
        figure("Redis PING round trip p99 (floor)", "ms", p(pings, 99), baseline=True),
        figure("arq poll_delay 0.005: enqueue → handler start p50", "ms", p(arq_fast, 50), baseline=True),
        figure("arq poll_delay 0.005: enqueue → handler start p99", "ms", p(arq_fast, 99), baseline=True),
        figure("arq poll_delay 0.005: idle worker CPU", "% of a core", a_cpu, baseline=True),
        figure("arq poll_delay 0.005: idle Redis commands", "cmd/s", a_cmds, baseline=True),
        figure("arq default poll_delay 0.5: enqueue → handler start p50", "ms", p(arq_default, 50), baseline=True),
        figure("arq default poll_delay 0.5: enqueue → handler start p99", "ms", p(arq_default, 99), baseline=True),
    ]
    ratio = _med(p([d[0] for d in sep], 50)) / max(_med(p(arq_fast, 50)), 1e-9)
    notes.append(
        f"{TRIGGERS} sequential triggers per repetition ({GAP * 1000:.0f} ms apart, so each finds the worker "
        f"asleep), {REPS} repetitions; figures are the per-repetition percentiles. Each trigger is sent as a "
        "prepared HTTP/1.1 request on a keep-alive connection (timed from the write, as wrk times), alternating "
        "with one sent through httpx (timed from the call, so its client-side CPU is included: the 'httpx call' "
        "lines). The embedded worker takes the API's own triggers without the dispatch list. Separate worker p50 is "
        f"{ratio:.2f}× plain arq's at poll_delay 0.005, which covers no HTTP request, lease or run record."
    )
    common.write_result("b1_trigger", "B1 trigger → handler start, idle worker cost", figures, notes=" ".join(notes))


def _med(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


async def _create(api_url: str, token: str) -> None:
    async with httpx.AsyncClient(base_url=api_url, headers={"Authorization": f"Bearer {token}"}, timeout=10) as c:
        await create_probe(c)


if __name__ == "__main__":
    main()
