"""`jobStatus` over real websockets against real uvicorn processes sharing Redis and the database."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from app.api.backlog import PER_JOB
from app.api.live import DELETED, Hub
from app.data.jobs import Job
from app.engine import cancels, leases
from app.engine.events import CHANNEL, publish
from app.jobs import service as jobs_service
from app.jobs.service import JobState
from app.platform.config import Settings
from app.platform.runtime import Runtime
from tests.conftest import make_token
from tests.factories import make_job
from tests.support.processes import ApiProcess
from tests.support.servers import free_port

pytestmark = pytest.mark.slow
TRANSPORT_WS = "graphql-transport-ws"
LEGACY_WS = "graphql-ws"
STATUS = "subscription S($id: ID) { jobStatus(id: $id) { id running lastResult enabled } }"


@pytest.fixture
def two_apis(settings_factory: Callable[..., Settings], tmp_path: Path) -> Iterator[tuple[ApiProcess, ApiProcess]]:
    settings = settings_factory(heartbeat_seconds=1.0, lease_ttl_seconds=3.0)
    a = ApiProcess(settings, tmp_path, free_port(), name="api-a")  # with the embedded worker
    b = ApiProcess(settings, tmp_path, free_port(), name="api-b", embedded_worker="false")
    with a, b:
        yield a, b


@pytest_asyncio.fixture
async def quick_job(orm: Runtime) -> str:
    await make_job(id="quick", payload={"seconds": 0.2, "summary": "done"})
    return "quick"


def ws_url(api: ApiProcess) -> str:
    return api.url.replace("http://", "ws://") + "/graphql"


async def open_transport_ws(api: ApiProcess, payload: dict[str, Any]) -> ClientConnection:
    ws = await connect(ws_url(api), subprotocols=[TRANSPORT_WS])  # type: ignore[list-item]
    await ws.send(json.dumps({"type": "connection_init", "payload": payload}))
    return ws


async def subscribe(ws: ClientConnection, job_id: str | None, sub_id: str = "1") -> None:
    message = {"id": sub_id, "type": "subscribe", "payload": {"query": STATUS, "variables": {"id": job_id}}}
    await ws.send(json.dumps(message))


async def states(ws: ClientConnection) -> AsyncIterator[dict[str, Any]]:
    while True:
        message = json.loads(await ws.recv())
        if message["type"] == "complete":
            return
        assert message["type"] == "next", message
        assert "errors" not in message["payload"], message
        yield message["payload"]["data"]["jobStatus"]


async def until_finished(ws: ClientConnection, timeout: float = 15.0) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []

    async def collect() -> None:
        async for state in states(ws):
            seen.append(state)
            if len(seen) > 1 and not state["running"] and state["lastResult"]:
                return

    await asyncio.wait_for(collect(), timeout)
    return seen


async def test_a_trigger_on_one_instance_reaches_a_subscriber_on_another(
    two_apis: tuple[ApiProcess, ApiProcess], quick_job: str, settings: Settings
) -> None:
    a, b = two_apis
    token = make_token(settings)
    async with await open_transport_ws(a, {"authorization": f"Bearer {token}"}) as ws:
        assert json.loads(await ws.recv())["type"] == "connection_ack"
        await subscribe(ws, quick_job)
        first = json.loads(await ws.recv())["payload"]["data"]["jobStatus"]
        assert first == {"id": "quick", "running": False, "lastResult": None, "enabled": True}
        async with b.client() as client:
            response = await client.post("/api/jobs/quick/trigger", headers={"Authorization": f"Bearer {token}"})
            assert response.status_code == 200
        seen = await until_finished(ws)
    running = [s["running"] for s in seen]
    assert running[0] is True and running[-1] is False, seen
    assert seen[-1]["lastResult"] == "success"


@pytest.mark.parametrize("protocol", [TRANSPORT_WS, LEGACY_WS])
@pytest.mark.parametrize(
    "payload",
    [{}, {"authorization": "Bearer nope"}, {"token": "not.a.jwt"}, "no-permission"],
    ids=["none", "bad-bearer", "bad-token", "no-permission"],
)
async def test_connections_without_a_valid_token_are_closed_4403(
    two_apis: tuple[ApiProcess, ApiProcess], settings: Settings, protocol: str, payload: Any
) -> None:
    if payload == "no-permission":
        payload = {"token": make_token(settings, permissions=["billing.read"])}
    async with connect(ws_url(two_apis[0]), subprotocols=[protocol]) as ws:  # type: ignore[list-item]
        await ws.send(json.dumps({"type": "connection_init", "payload": payload}))
        received = []
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                received.append(json.loads(await asyncio.wait_for(ws.recv(), 5)))
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403
    assert all(m["type"] not in {"connection_ack", "next", "data"} for m in received)


@pytest.mark.parametrize("protocol", [TRANSPORT_WS, LEGACY_WS])
async def test_both_protocols_accept_a_token_in_init_or_in_the_upgrade_header(
    two_apis: tuple[ApiProcess, ApiProcess], settings: Settings, protocol: str
) -> None:
    token = make_token(settings)
    ways: list[tuple[dict[str, str], dict[str, str]]] = [
        ({"token": token}, {}),
        ({"authorization": f"Bearer {token}"}, {}),
        ({}, {"Authorization": f"Bearer {token}"}),
    ]
    for payload, headers in ways:
        async with connect(
            ws_url(two_apis[0]),
            subprotocols=[protocol],  # type: ignore[list-item]
            additional_headers=headers,
        ) as ws:
            await ws.send(json.dumps({"type": "connection_init", "payload": payload}))
            assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "connection_ack"
            start = "subscribe" if protocol == TRANSPORT_WS else "start"
            query = {"query": STATUS, "variables": {"id": "metadata-sync"}}
            await ws.send(json.dumps({"id": "1", "type": start, "payload": query}))
            message = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert message["type"] in {"next", "data"}
            assert message["payload"]["data"]["jobStatus"]["id"] == "metadata-sync"


@pytest.mark.serial
async def test_a_connection_ends_within_a_second_of_its_token_expiry(
    two_apis: tuple[ApiProcess, ApiProcess], settings: Settings, quick_job: str
) -> None:
    token = make_token(settings, ttl=timedelta(seconds=3))
    expires = time.time() + 3
    async with await open_transport_ws(two_apis[0], {"token": token}) as ws:
        assert json.loads(await ws.recv())["type"] == "connection_ack"
        await subscribe(ws, None)
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                message = json.loads(await asyncio.wait_for(ws.recv(), 10))
                assert time.time() < expires, f"delivered after expiry: {message}"
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403
    assert time.time() - expires < 1.5  # int(exp) rounds down by up to a second; closing takes the rest


@pytest.mark.serial
async def test_a_stalled_subscriber_does_not_delay_a_healthy_one(
    two_apis: tuple[ApiProcess, ApiProcess], settings: Settings, quick_job: str
) -> None:
    a, _ = two_apis
    token = make_token(settings)
    stalled = await open_transport_ws(a, {"token": token})
    await subscribe(stalled, None)  # and never reads again
    async with await open_transport_ws(a, {"token": token}) as healthy:
        assert json.loads(await healthy.recv())["type"] == "connection_ack"
        await subscribe(healthy, quick_job)
        await healthy.recv()  # current state
        async with a.client() as client:
            for _ in range(5):
                started = time.monotonic()
                await client.post("/api/jobs/quick/trigger", headers={"Authorization": f"Bearer {token}"})
                seen = await until_finished(healthy, timeout=5)
                assert seen[-1]["lastResult"] == "success"
                assert time.monotonic() - started < 3
    await stalled.close()


async def test_the_hub_coalesces_a_stalled_mailbox_and_ends_a_deleted_jobs_stream(orm: Runtime) -> None:
    loads: list[str] = []

    async def load(job_id: str) -> object:
        loads.append(job_id)
        return {"job": job_id, "version": len(loads)}

    hub = Hub(orm.redis, load)
    hub.start()
    await asyncio.wait_for(hub.connected.wait(), 5)
    stalled, watcher = hub.open(None), hub.open("job-1")
    for i in range(200):
        await publish(orm.redis, "run.started", f"job-{i % 4}")
    await publish(orm.redis, DELETED, "job-1")
    await asyncio.sleep(0.5)
    # At most PER_JOB entries per job, however many events; the oldest went.
    assert stalled.pending.jobs() == ["job-0", "job-1", "job-2", "job-3"]
    assert all(len(stalled.pending.unsent(j)) == PER_JOB for j in stalled.pending.jobs())
    assert len(loads) == 200  # one state read per event, shared by all subscribers
    latest = [await watcher.next_change(timeout=1) for _ in range(PER_JOB)]
    assert all(c is not None and c.job_id == "job-1" for c in latest)
    assert latest[-1] is not None and latest[-1].state is None  # the newest, last: deleted
    assert [c.state["version"] for c in latest[:-1] if c is not None and isinstance(c.state, dict)] == sorted(
        c.state["version"] for c in latest[:-1] if c is not None and isinstance(c.state, dict)
    )  # in order
    assert await watcher.next_change(timeout=0.1) is None
    await hub.stop()
    assert await Job.filter(id="job-1").count() == 0


async def test_job_deleted_tells_every_subscriber_which_job_was_deleted_and_nothing_else(
    two_apis: tuple[ApiProcess, ApiProcess], quick_job: str, settings: Settings
) -> None:
    a, b = two_apis
    await make_job(id="doomed", name="Doomed", enabled=False)
    token = make_token(settings)
    headers = {"Authorization": f"Bearer {token}"}
    async with await open_transport_ws(a, {"authorization": f"Bearer {token}"}) as ws:
        assert json.loads(await ws.recv())["type"] == "connection_ack"
        query = "subscription { jobDeleted }"
        await ws.send(json.dumps({"id": "d", "type": "subscribe", "payload": {"query": query}}))
        await subscribe(ws, None, sub_id="s")  # every job's changes on the same socket, for contrast
        await asyncio.sleep(0.3)  # both subscriptions registered with the hub
        async with b.client() as client:
            # A change that is not a deletion reaches jobStatus only; the deletion reaches jobDeleted.
            assert (await client.post(f"/api/jobs/{quick_job}/trigger", headers=headers)).status_code == 200
            deadline = time.monotonic() + 10
            status_ids: set[str] = set()
            while "quick" not in status_ids:
                message = json.loads(await asyncio.wait_for(ws.recv(), deadline - time.monotonic()))
                assert message["id"] == "s", message  # nothing on jobDeleted for a run
                status_ids.add(message["payload"]["data"]["jobStatus"]["id"])
            assert (await client.delete("/api/jobs/doomed", headers=headers)).status_code == 204
        deleted: list[str] = []
        while not deleted:
            message = json.loads(await asyncio.wait_for(ws.recv(), 10))
            if message["id"] == "d":
                assert message["type"] == "next", message
                deleted.append(message["payload"]["data"]["jobDeleted"])
    assert deleted == ["doomed"]


async def test_the_hub_shows_each_run_event_as_it_happened_even_when_read_after_the_next_change(
    orm: Runtime,
) -> None:
    # No lease and no last run in the stores: the run started and ended before the hub read the state.
    await make_job(id="blink", payload={"seconds": 0})
    hub = Hub(orm.redis, lambda job_id: jobs_service.find(orm, job_id=job_id), as_of_event=jobs_service.as_of_event)
    hub.start()
    try:
        await asyncio.wait_for(hub.connected.wait(), 5)
        box = hub.open("blink")
        await publish(orm.redis, "run.started", "blink", running=True, runId=7)
        started = await box.next_change(timeout=5)
        await publish(
            orm.redis,
            "run.finished",
            "blink",
            running=False,
            runId=7,
            startedAt="2026-11-23T18:00:00.250Z",
            result="success",
            duration=12,
        )
        finished = await box.next_change(timeout=5)
    finally:
        await hub.stop()
    assert started is not None and isinstance(started.state, JobState)
    assert started.state.running is True
    assert finished is not None and isinstance(finished.state, JobState)
    assert finished.state.running is False
    assert finished.state.job.last_run_at == datetime(2026, 11, 23, 18, 0, 0, 250000, tzinfo=UTC)
    assert (finished.state.job.last_result, finished.state.job.last_duration_ms) == ("success", 12)
    row = await Job.get(id="blink")
    assert row.last_run_at is None  # the stores themselves were not changed by the hub


async def test_the_hub_reads_the_states_of_a_burst_of_events_together(orm: Runtime) -> None:
    reads: list[list[str]] = []

    async def load_one(job_id: str) -> object:
        raise AssertionError("a hub with a batch loader reads states in batches")

    async def load_many(job_ids: list[str]) -> dict[str, Any]:
        reads.append(job_ids)
        return {j: {"job": j, "read": len(reads)} for j in job_ids}

    hub = Hub(orm.redis, load_one, load_states=load_many)
    hub.start()
    try:
        await asyncio.wait_for(hub.connected.wait(), 5)
        every, one = hub.open(None), hub.open("job-1")
        # 200 events published in one round trip reach the hub together, as a burst of fires does.
        async with orm.redis.pipeline(transaction=False) as pipe:
            for i in range(200):
                pipe.publish(CHANNEL, json.dumps({"event": "run.started", "jobId": f"job-{i % 4}", "running": True}))
            pipe.publish(CHANNEL, json.dumps({"event": DELETED, "jobId": "job-3"}))
            await pipe.execute()
        await asyncio.sleep(0.5)
    finally:
        await hub.stop()
    assert sum(len(r) for r in reads) < 200 / 4, reads  # far fewer reads than events
    assert all(r == sorted(set(r)) for r in reads)  # each job at most once per read
    assert sorted(every.pending.jobs()) == ["job-0", "job-1", "job-2", "job-3"]
    assert every.pending.unsent("job-3")[-1].state is None  # deleted last: its newest change says so
    assert every.pending.unsent("job-0")[-1].state == {"job": "job-0", "read": len(reads)}
    assert one.pending.jobs() == ["job-1"]


async def test_the_hub_shows_a_skipped_fire_with_its_reason_and_a_run_being_cancelled(orm: Runtime) -> None:
    await make_job(id="busy", payload={"seconds": 0})
    hub = Hub(orm.redis, lambda job_id: jobs_service.find(orm, job_id=job_id), as_of_event=jobs_service.as_of_event)
    hub.start()
    try:
        await asyncio.wait_for(hub.connected.wait(), 5)
        box = hub.open("busy")
        fire = "2026-11-23T18:00:01.000Z"
        await publish(orm.redis, "fire.skipped", "busy", fireAt=fire, lastFireAt=fire, count=1, reason="overlap")
        skipped = await box.next_change(timeout=5)
        # A run holds the job and a cancel was asked of it: the stores say so, whatever the event carries.
        assert await leases.acquire(orm.redis, "busy", "the-run", 30)
        assert await cancels.request(orm, "busy", "cancelled by user:1", by="user") == "the-run"
        await publish(orm.redis, "run.cancelling", "busy", running=True, cancelling=True)
        cancelling = await box.next_change(timeout=5)
        await leases.release(orm.redis, "busy", "the-run")
        await publish(orm.redis, "run.cancelling", "busy", running=True, cancelling=True)  # late: ended already
        late = await box.next_change(timeout=5)
        await publish(orm.redis, "run.finished", "busy", running=False, runId=3, result="error", duration=5)
        finished = await box.next_change(timeout=5)
    finally:
        await hub.stop()
    assert skipped is not None and isinstance(skipped.state, JobState)
    assert skipped.state.job.last_skipped_at == datetime(2026, 11, 23, 18, 0, 1, tzinfo=UTC)
    assert skipped.state.job.last_skip_reason == "overlap"
    assert cancelling is not None and isinstance(cancelling.state, JobState)
    assert (cancelling.state.running, cancelling.state.cancelling) == (True, True)
    assert late is not None and isinstance(late.state, JobState)
    assert (late.state.running, late.state.cancelling) == (False, False)  # never a lie in either direction
    assert finished is not None and isinstance(finished.state, JobState)
    assert (finished.state.running, finished.state.cancelling) == (False, False)
