"""A small jobs-gateway deployment on loopback: its own redis-server, API processes (embedded worker
off), standalone `jobs-gateway worker` processes and one database, plus the helpers the
scenarios share (waiting, GraphQL over websockets, figures)."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psutil
from websockets.asyncio.client import ClientConnection, connect

from app.platform.config import Settings
from tests.conftest import TEST_JOB_TYPES, make_settings, make_token
from tests.support.processes import ApiProcess, WorkerProcess, _Process
from tests.support.servers import RedisServer, free_port

TRANSPORT_WS = "graphql-transport-ws"

# Engine timings for every scenario: short enough that faults resolve within seconds, long enough
# for a loaded 2-core machine (a lease survives a missed heartbeat or two). The periodic reconcile
# keeps its production period (30 s): no scenario may lean on it to recover in time.
CLUSTER_SETTINGS: dict[str, Any] = {
    "embedded_worker": False,
    "heartbeat_seconds": 1.0,
    "lease_ttl_seconds": 4.0,
    "worker_poll_delay": 0.02,
    "shutdown_grace_seconds": 3.0,
    "log_level": "INFO",  # the processes' readiness is read from their INFO lines
    "job_type_modules": [TEST_JOB_TYPES, "tests.reliability.job_types"],
}


def start_all(processes: Sequence[_Process]) -> None:
    """Start processes side by side: each takes a second or two to import the app."""
    with ThreadPoolExecutor(max_workers=max(1, len(processes))) as pool:
        for future in [pool.submit(p.start, 30.0) for p in processes]:
            future.result()


class Cluster:
    """Two APIs and two workers by default, sharing one Redis and one database."""

    def __init__(
        self,
        workdir: Path,
        database_url: str,
        *,
        apis: int = 2,
        workers: int = 2,
        api_env: dict[str, Any] | None = None,
        worker_env: dict[str, Any] | None = None,
        **overrides: Any,
    ) -> None:
        self.workdir = workdir
        self.redis = RedisServer()
        self.redis.start()
        self.settings: Settings = make_settings(
            database_url=database_url, redis_url=self.redis.url, **{**CLUSTER_SETTINGS, **overrides}
        )
        self.apis = [
            ApiProcess(self.settings, workdir, free_port(), name=f"api-{i}", **(api_env or {})) for i in range(apis)
        ]
        self._worker_env = worker_env or {}
        self.workers = [self.new_worker(f"worker-{i}") for i in range(workers)]
        self.token = make_token(self.settings)
        self.auth = {"Authorization": f"Bearer {self.token}"}

    def new_worker(self, name: str) -> WorkerProcess:
        return WorkerProcess(self.settings, self.workdir, name, **self._worker_env)

    def start(self) -> None:
        try:
            start_all([*self.apis, *self.workers])
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for process in [*self.workers, *self.apis]:
            process.stop()
        self.redis.close()

    def client(self, index: int = 0, *, timeout: float = 10.0, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.apis[index].url, headers=self.auth, timeout=timeout, **kwargs)

    def ws_url(self, index: int = 0) -> str:
        return self.apis[index].url.replace("http://", "ws://") + "/graphql"

    def logs(self) -> str:
        """Every process's last lines; the ones that exited first, at length: a failure report shortened in
        the middle (as CI's is) still shows why a process died."""
        processes = [*self.apis, *self.workers]
        exited = [p for p in processes if p.proc is not None and p.proc.poll() is not None]
        parts = [f"--- {p.name} (exited {p.proc.poll() if p.proc else None})\n{p.tail(80)}" for p in exited]
        parts += [f"--- {p.name}\n{p.tail(30)}" for p in processes if p not in exited]
        return "\n".join(parts)


@contextmanager
def running_cluster(workdir: Path, database_url: str, **kwargs: Any) -> Iterator[Cluster]:
    cluster = Cluster(workdir, database_url, **kwargs)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.close()


def rss_mb(process: _Process) -> float:
    assert process.proc is not None
    return float(psutil.Process(process.proc.pid).memory_info().rss) / 2**20


async def wait_for(check: Callable[[], Awaitable[bool]], *, timeout: float, interval: float = 0.05) -> float:
    """Poll `check` until it holds; returns the seconds it took, fails after `timeout`."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)
    return time.monotonic() - started


def figure(scenario: str, **values: Any) -> None:
    """Print a scenario's figures (`pytest -s` shows them)."""
    line = " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
    print(f"\n[{scenario}] {line}")
    target = os.environ.get("RELIABILITY_FIGURES")  # a JSON-lines file to collect them in, when set
    if target:
        with Path(target).open("a") as out:
            out.write(json.dumps({"scenario": scenario, "at": time.time(), **values}, default=str) + "\n")


async def create_job(client: httpx.AsyncClient, job_id: str, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"id": job_id, "name": job_id, "type": "test_sleep", "schedule": "0 0 1 1 *"}
    body.update(fields)
    response = await client.post("/api/jobs", json=body)
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


async def job_logs(client: httpx.AsyncClient, job_id: str) -> list[dict[str, Any]]:
    response = await client.get(f"/api/jobs/{job_id}/logs", params={"limit": 100})
    assert response.status_code == 200, response.text
    logs: list[dict[str, Any]] = response.json()["logs"]
    return logs


async def graphql(client: httpx.AsyncClient, query: str, **variables: Any) -> dict[str, Any]:
    response = await client.post("/graphql", json={"query": query, "variables": variables})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


class Subscriber:
    """One `jobStatus` subscription over graphql-transport-ws, collecting every state it is sent."""

    QUERY = "subscription S($id: ID) { jobStatus(id: $id) { id running lastRun lastResult } }"

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.states: list[dict[str, Any]] = []
        self.closed: int | None = None
        self._reader: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, url: str, token: str, job_id: str | None) -> Subscriber:
        ws = await connect(url, subprotocols=[TRANSPORT_WS])  # type: ignore[list-item]
        await ws.send(json.dumps({"type": "connection_init", "payload": {"token": token}}))
        ack = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert ack["type"] == "connection_ack", ack
        payload = {"query": cls.QUERY, "variables": {"id": job_id}}
        await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": payload}))
        subscriber = cls(ws)
        subscriber._reader = asyncio.create_task(subscriber._read())
        await wait_for(lambda: _true(bool(subscriber.states)), timeout=10)
        return subscriber

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                message = json.loads(raw)
                if message["type"] == "next":
                    self.states.append(message["payload"]["data"]["jobStatus"])
        finally:
            self.closed = self.ws.close_code

    async def seen(self, check: Callable[[dict[str, Any]], bool], *, timeout: float, after: int = 0) -> dict[str, Any]:
        """The first state after index `after` that satisfies `check`."""
        found: list[dict[str, Any]] = []

        async def arrived() -> bool:
            found[:] = [s for s in self.states[after:] if check(s)]
            return bool(found) or self.closed is not None

        try:
            await wait_for(arrived, timeout=timeout)
        except AssertionError:
            # The states just before the mark too: one that came early shows up there.
            earlier = self.states[max(0, after - 3) : after]
            message = f"no such state within {timeout} s; saw {self.states[after:]}, just before: {earlier}"
            raise AssertionError(message) from None
        assert found, f"subscription closed ({self.closed}) before the expected state; saw {self.states[after:]}"
        return found[0]

    async def close(self) -> None:
        await self.ws.close()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)


async def _true(value: bool) -> bool:
    return value
