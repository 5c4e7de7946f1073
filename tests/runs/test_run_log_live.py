"""Run logs live: the `runLog` subscription (every line once, in order, through a reconnect, across instances), and
progress on `jobStatus`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from app.platform.config import Settings
from app.platform.runtime import Runtime
from tests.conftest import make_token
from tests.factories import make_job, wait_until
from tests.support.processes import ApiProcess, WorkerProcess
from tests.support.servers import free_port
from tests.support.subscriptions import served

pytestmark = pytest.mark.postgres
RUN_LOG = "subscription($run: ID!, $after: Int) { runLog(runId: $run, after: $after) { runId seq level message } }"
PROGRESS = "subscription($id: ID) { jobStatus(id: $id) { running progress { done total note } } }"


async def subscribe(url: str, token: str, query: str, variables: dict[str, Any]) -> ClientConnection:
    ws = await connect(url, subprotocols=["graphql-transport-ws"])  # type: ignore[list-item]
    await ws.send(json.dumps({"type": "connection_init", "payload": {"token": token}}))
    assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "connection_ack"
    await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": {"query": query, "variables": variables}}))
    return ws


async def lines_of(ws: ClientConnection, count: int | None = None, timeout: float = 20.0) -> list[dict[str, Any]]:
    """`count` lines (None: until the subscription completes)."""
    got: list[dict[str, Any]] = []

    async def read() -> None:
        while count is None or len(got) < count:
            message = json.loads(await ws.recv())
            if message["type"] == "complete":
                assert count is None, f"completed after {len(got)} lines"
                return
            assert message["type"] == "next" and "errors" not in message["payload"], message
            got.append(message["payload"]["data"]["runLog"])

    await asyncio.wait_for(read(), timeout)
    return got


async def running_run(client: httpx.AsyncClient, auth: dict[str, str], job_id: str, lines: int) -> int:
    """The id of the job's run in progress, once it has stored at least `lines` lines."""
    run_id = 0

    async def started() -> bool:
        nonlocal run_id
        logs = (await client.get(f"/api/jobs/{job_id}/logs", headers=auth)).json()["logs"]
        if not logs:
            return False
        run_id = logs[0]["id"]
        page = (await client.get(f"/api/runs/{run_id}/log?limit=1000", headers=auth)).json()
        assert not page["ended"], "the run ended before the test could join it mid-run"
        return len(page["lines"]) >= lines

    await wait_until(started, timeout=15)
    return run_id


async def test_a_subscriber_joining_mid_run_sees_every_line_once_in_order_through_a_reconnect(
    settings: Settings,
) -> None:
    token = make_token(settings)
    auth = {"Authorization": f"Bearer {token}"}
    async with served(settings) as (_, url), httpx.AsyncClient(base_url=url.replace("ws", "http", 1)[:-8]) as client:
        await make_job(id="chatty", type="test_chatty", payload={"lines": 150, "pause": 0.01})
        assert (await client.post("/api/jobs/chatty/trigger", headers=auth)).status_code == 200
        run_id = await running_run(client, auth, "chatty", 20)
        async with await subscribe(url, token, RUN_LOG, {"run": run_id, "after": 0}) as ws:
            first = await lines_of(ws, 40)
        # Reconnect with the last seq seen: the rest, then the end of the stream once the run has ended.
        async with await subscribe(url, token, RUN_LOG, {"run": run_id, "after": first[-1]["seq"]}) as ws:
            rest = await lines_of(ws)
        seen = [line["seq"] for line in first + rest]
        assert seen == list(range(1, 151))
        assert [line["message"] for line in first + rest] == [f"line {i} of 150" for i in range(1, 151)]
        assert {line["runId"] for line in first + rest} == {run_id}
        run = (await client.get(f"/api/runs/{run_id}", headers=auth)).json()
        assert run["completedAt"] is not None  # the stream ended because the run did
        # After the end: the stored lines past `after`, then the stream completes at once.
        async with await subscribe(url, token, RUN_LOG, {"run": run_id, "after": 145}) as ws:
            assert [line["seq"] for line in await lines_of(ws, timeout=5)] == [146, 147, 148, 149, 150]


async def test_run_log_refuses_unknown_runs_and_callers_without_jobs_read(settings: Settings) -> None:
    async with served(settings) as (_, url):
        async with await subscribe(url, make_token(settings), RUN_LOG, {"run": 987654}) as ws:
            message = json.loads(await asyncio.wait_for(ws.recv(), 5))
            [error] = message["payload"] if message["type"] == "error" else message["payload"]["errors"]
            assert error["extensions"]["code"] == "NOT_FOUND" and error["extensions"]["error"] == "run_not_found"
        trigger_only = make_token(settings, permissions=["jobs.trigger"])
        async with await subscribe(url, trigger_only, RUN_LOG, {"run": 1}) as ws:
            message = json.loads(await asyncio.wait_for(ws.recv(), 5))
            [error] = message["payload"] if message["type"] == "error" else message["payload"]["errors"]
            assert error["extensions"]["code"] == "FORBIDDEN"


async def test_job_status_carries_the_running_runs_progress(settings: Settings) -> None:
    token = make_token(settings)
    auth = {"Authorization": f"Bearer {token}"}
    async with served(settings) as (_, url), httpx.AsyncClient(base_url=url.replace("ws", "http", 1)[:-8]) as client:
        await make_job(id="steps", type="test_chatty", payload={"lines": 40, "pause": 0.05})
        async with await subscribe(url, token, PROGRESS, {"id": "steps"}) as ws:
            states: list[dict[str, Any]] = []
            assert (await client.post("/api/jobs/steps/trigger", headers=auth)).status_code == 200

            async def until_done() -> None:
                while True:
                    message = json.loads(await ws.recv())
                    assert message["type"] == "next", message
                    states.append(message["payload"]["data"]["jobStatus"])
                    if len(states) > 1 and not states[-1]["running"]:
                        return

            await asyncio.wait_for(until_done(), 20)
        reports = [s["progress"] for s in states if s["progress"] is not None]
        # Reported while it ran (a 2 s run: an event at most every 0.5 s), not only at the end.
        assert 3 <= len(reports) <= 6, states
        assert all(s["running"] for s in states if s["progress"] is not None)
        done = [r["done"] for r in reports]
        assert done == sorted(done) and done[-1] <= 40
        assert {r["total"] for r in reports} == {40}
        assert reports[-1]["note"] == f"line {int(done[-1])}"
        assert states[-1] == {"running": False, "progress": None}
        # A query while it runs reads the same report from the database.
        assert (await client.post("/api/jobs/steps/trigger", headers=auth)).status_code == 200
        query = '{ job(id: "steps") { running progress { done total } } }'

        async def reported() -> bool:
            job = (await client.post("/graphql", json={"query": query}, headers=auth)).json()["data"]["job"]
            return job["running"] and job["progress"] is not None and job["progress"]["total"] == 40

        await wait_until(reported, timeout=10)


@pytest.mark.slow
async def test_two_instances_and_a_separate_worker(
    settings_factory: Callable[..., Settings], tmp_path: Path, orm: Runtime
) -> None:
    settings = settings_factory()
    token = make_token(settings)
    auth = {"Authorization": f"Bearer {token}"}
    await make_job(id="remote", type="test_chatty", payload={"lines": 300, "pause": 0.01})
    a = ApiProcess(settings, tmp_path, free_port(), name="api-a", embedded_worker="false")
    b = ApiProcess(settings, tmp_path, free_port(), name="api-b", embedded_worker="false")
    with a, b, WorkerProcess(settings, tmp_path):
        async with a.client() as client_a:
            assert (await client_a.post("/api/jobs/remote/trigger", headers=auth)).status_code == 200
            run_id = await running_run(client_a, auth, "remote", 30)
            ws_b = b.url.replace("http", "ws", 1) + "/graphql"
            ws_a = a.url.replace("http", "ws", 1) + "/graphql"
            async with await subscribe(ws_b, token, RUN_LOG, {"run": run_id, "after": 10}) as ws:
                first = await lines_of(ws, 60)
            async with await subscribe(ws_a, token, RUN_LOG, {"run": run_id, "after": first[-1]["seq"]}) as ws:
                rest = await lines_of(ws, timeout=30)
            assert [line["seq"] for line in first + rest] == list(range(11, 301))
            run = (await client_a.get(f"/api/runs/{run_id}", headers=auth)).json()
            assert (run["result"], run["details"]) == ("success", "logged 300 lines")
