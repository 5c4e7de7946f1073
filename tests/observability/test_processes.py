"""Real uvicorn and arq processes: the stale-schema refusal, SIGTERM, JSON logs and a worker's metrics port."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from tortoise import Tortoise
from tortoise.migrations.api import migrate as tortoise_migrate
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from app.data.runs import Run
from app.platform import db, gc_tuning
from app.platform.config import Settings
from app.platform.runtime import Runtime
from tests.conftest import make_token
from tests.factories import make_job, wait_until
from tests.observability.scrape import value
from tests.support.processes import BIN, ApiProcess, WorkerProcess, _Process, env_for
from tests.support.servers import free_port

pytestmark = pytest.mark.slow
FIRST_PENDING = "0002_job_type_tables"


def json_lines(process: _Process) -> list[dict[str, Any]]:
    lines = []
    for line in process.log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


async def roll_back_to_the_first_migration(settings: Settings) -> None:
    """What a database looks like after a deploy brought migrations nobody applied yet."""
    try:
        await tortoise_migrate(config=db.tortoise_config(settings), target=f"{db.APP_LABEL}.0001_initial")
    finally:
        await Tortoise.close_connections()


def assert_refused(process: _Process) -> None:
    """The process exits non-zero and says why. (arq prints its ready line before its start-up hook runs,
    so a worker may look started for a moment.)"""
    try:
        with contextlib.suppress(RuntimeError):
            process.start()
        assert process.wait(20) != 0
    finally:
        process.stop()
    log = process.log_path.read_text(errors="replace")
    assert f"is behind: models.{FIRST_PENDING}" in log
    assert "make migrate" in log and "jobs-gateway migrate" in log


async def test_the_api_refuses_a_database_that_is_behind(settings: Settings, tmp_path: Path) -> None:
    await roll_back_to_the_first_migration(settings)
    assert_refused(ApiProcess(settings, tmp_path, free_port()))


async def test_a_standalone_worker_refuses_a_database_that_is_behind(settings: Settings, tmp_path: Path) -> None:
    await roll_back_to_the_first_migration(settings)
    assert_refused(WorkerProcess(settings, tmp_path, "arq-worker"))
    cli_worker = WorkerProcess(settings, tmp_path, "cli-worker")
    cli_worker.argv = [str(BIN / "jobs-gateway"), "worker"]
    assert_refused(cli_worker)


async def test_migrate_on_start_applies_what_is_missing(settings: Settings, tmp_path: Path) -> None:
    await roll_back_to_the_first_migration(settings)
    with ApiProcess(settings, tmp_path, free_port(), migrate_on_start="true") as api:
        async with api.client() as client:
            assert (await client.get("/readyz")).status_code == 200


@pytest.fixture
def grace_settings(settings_factory: Callable[..., Settings]) -> Settings:
    return settings_factory(shutdown_grace_seconds=6.0, heartbeat_seconds=0.5, lease_ttl_seconds=3.0)


async def slow_body(first: bytes, rest: bytes, pause: float, sent: asyncio.Event) -> AsyncIterator[bytes]:
    yield first
    sent.set()  # httpx asks for the next chunk once the headers and the first one are written
    await asyncio.sleep(pause)
    yield rest


async def test_sigterm_drains_requests_closes_subscriptions_and_lets_runs_finish(
    grace_settings: Settings, orm: Runtime, tmp_path: Path
) -> None:
    await make_job(id="short", schedule="0 0 1 1 *", payload={"seconds": 1.5, "summary": "finished"})
    await make_job(id="endless", type="test_block", schedule="0 0 1 1 *")
    token = make_token(grace_settings)
    auth = {"Authorization": f"Bearer {token}"}
    api = ApiProcess(grace_settings, tmp_path, free_port())
    api.start()
    try:
        async with (
            api.client() as client,
            connect(
                api.url.replace("http://", "ws://") + "/graphql",
                subprotocols=["graphql-transport-ws"],  # type: ignore[list-item]
            ) as ws,
        ):
            await ws.send(json.dumps({"type": "connection_init", "payload": {"token": token}}))
            assert json.loads(await ws.recv())["type"] == "connection_ack"
            query = 'subscription { jobStatus(id: "short") { id running } }'
            await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": {"query": query}}))
            assert json.loads(await ws.recv())["type"] == "next"
            scraped = (await client.get("/metrics")).text
            assert value(scraped, "jobs_gateway_websocket_subscribers") == 1

            for job_id in ("short", "endless"):
                assert (await client.post(f"/api/jobs/{job_id}/trigger", headers=auth)).status_code == 200

            async def both_running() -> bool:
                return await Run.filter(job_id__in=["short", "endless"]).count() == 2

            await wait_until(both_running, timeout=20)
            # A request in flight when SIGTERM lands: its body is still arriving.
            first_chunk_sent = asyncio.Event()
            body = json.dumps({"id": "late", "name": "Late", "type": "test_sleep", "schedule": "0 0 1 1 *"}).encode()
            in_flight = asyncio.create_task(
                client.post(
                    "/api/jobs",
                    content=slow_body(body[:10], body[10:], 1.0, first_chunk_sent),
                    headers={**auth, "Content-Type": "application/json"},
                )
            )
            await asyncio.wait_for(first_chunk_sent.wait(), 10)
            await asyncio.sleep(0.2)  # for the server to read what was sent: the request is in flight
            sent_at = time.monotonic()
            api.signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosed) as closed:
                while True:  # state changes of the running job may still arrive first
                    assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "next"
            assert closed.value.rcvd is not None and closed.value.rcvd.code in (1001, 1012)
            response = await in_flight
            assert response.status_code == 201, response.text
        code = await asyncio.to_thread(api.wait, 20)
        took = time.monotonic() - sent_at
    finally:
        api.stop()
    print(f"SIGTERM to exit: {took:.2f} s (grace {grace_settings.shutdown_grace_seconds:g} s)")
    # uvicorn re-raises the signal once it has shut down cleanly, so the process ends "killed by SIGTERM",
    # which is what process managers expect of a clean stop.
    assert code in (0, -signal.SIGTERM), api.tail()
    assert "Application shutdown complete" in api.tail()
    short = await Run.get(job_id="short")
    assert (short.result, short.details) == ("success", "finished")
    endless = await Run.get(job_id="endless")
    assert (endless.result, endless.details) == ("error", "worker shut down")
    with pytest.raises(httpx.ConnectError):
        async with api.client() as client:
            await client.get("/healthz")


async def test_logs_are_json_lines_with_request_user_job_and_run(
    settings: Settings, orm: Runtime, tmp_path: Path
) -> None:
    await make_job(id="failing", type="test_fail", schedule="0 0 1 1 *", payload={"message": "kaput"})
    token = make_token(settings, sub="42")
    api = ApiProcess(settings, tmp_path, free_port())
    with api:
        async with api.client() as client:
            response = await client.post(
                "/api/jobs/failing/trigger",
                headers={"Authorization": f"Bearer {token}", "X-Request-ID": "req-abc.123"},
            )
            assert response.headers["X-Request-ID"] == "req-abc.123"
            generated = (await client.get("/healthz")).headers["X-Request-ID"]
            assert len(generated) == 32
            refused = (await client.get("/healthz", headers={"X-Request-ID": "bad id with spaces"})).headers
            assert refused["X-Request-ID"] != "bad id with spaces"

        async def run_failed() -> bool:
            return any(line["logger"] == "app.engine.runner" for line in json_lines(api))

        await wait_until(run_failed, timeout=20)
    lines = json_lines(api)
    assert lines and all({"message", "level", "timestamp", "logger"} <= line.keys() for line in lines)
    [access] = [
        line for line in lines if line["logger"] == "uvicorn.access" and line.get("request_id") == "req-abc.123"
    ]
    assert access["user"] == "42" and "/api/jobs/failing/trigger" in access["message"]
    [failure] = [line for line in lines if line["logger"] == "app.engine.runner" and line["level"] == "error"]
    run = await Run.get(job_id="failing")
    assert (failure["job_id"], failure["run_id"]) == ("failing", run.id)
    assert "kaput" in failure["exception"]
    assert "request_id" not in failure  # the run is not part of the request that queued it


async def test_a_standalone_worker_serves_its_own_metrics(
    settings_factory: Callable[..., Settings], orm: Runtime, tmp_path: Path
) -> None:
    settings = settings_factory(embedded_worker=False)
    await make_job(id="remote", schedule="0 0 1 1 *", payload={"seconds": 0.05})
    port = free_port()
    api = ApiProcess(settings, tmp_path, free_port())
    worker = WorkerProcess(settings, tmp_path, worker_metrics_port=port)
    with worker, api:
        client = api.client()
        auth = {"Authorization": f"Bearer {make_token(settings)}"}
        assert (await client.post("/api/jobs/remote/trigger", headers=auth)).status_code == 200

        async def finished() -> bool:
            run = await Run.get_or_none(job_id="remote")
            return run is not None and run.completed_at is not None

        await wait_until(finished, timeout=20)
        async with httpx.AsyncClient(timeout=5) as scraper:
            text = (await scraper.get(f"http://127.0.0.1:{port}/metrics")).text
        assert value(text, "jobs_gateway_runs_started_total", job_id="remote", trigger="manual") == 1
        assert value(text, "jobs_gateway_runs_finished_total", job_id="remote", result="success") == 1
        assert value(text, "jobs_gateway_queue_depth") >= 0
        api_text = (await client.get("/metrics")).text
        assert value(api_text, "jobs_gateway_runs_started_total", job_id="remote") == 0  # ran in the worker
        assert "worker" not in (await client.get("/readyz")).json()["checks"]
        # Deleted through the API: the worker drops its series of the job without a restart.
        assert (await client.post("/api/jobs/remote/stop", headers=auth)).status_code == 200
        assert (await client.delete("/api/jobs/remote", headers=auth)).status_code == 204

        async def forgotten() -> bool:
            async with httpx.AsyncClient(timeout=5) as scraper:
                return 'job_id="remote"' not in (await scraper.get(f"http://127.0.0.1:{port}/metrics")).text

        await wait_until(forgotten, timeout=10)
        await client.aclose()
    # Both serving processes took the collector settings once started (app.platform.gc_tuning; B3, B4).
    for process in (api, worker):
        [tuned] = [line for line in json_lines(process) if line["logger"] == "app.platform.gc_tuning"]
        assert f"thresholds ({gc_tuning.GEN0_THRESHOLD}, " in tuned["message"]


def test_env_for_passes_new_settings(settings: Settings) -> None:
    env = env_for(settings, worker_metrics_port=9999)
    assert env["WORKER_METRICS_PORT"] == "9999"
