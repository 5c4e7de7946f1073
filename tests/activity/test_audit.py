"""Audit that answers "who changed what": each entry's changes, request id and client address; filters and
keyset pages on the activity and run logs; the live `activityAdded` subscription across two API processes."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.activity import service as activity_service
from app.data.activity import Activity
from app.data.runs import Run
from app.platform.config import Settings
from tests.conftest import make_token
from tests.factories import make_job
from tests.graphql.test_api import gql
from tests.graphql.test_subscriptions import open_transport_ws
from tests.support.processes import ApiProcess
from tests.support.servers import free_port

pytestmark = pytest.mark.postgres
JOB = {"id": "audited", "name": "Audited", "type": "test_sleep", "schedule": "0 6 * * *"}


async def test_every_entry_says_what_changed_who_and_from_where(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    headers = {**auth, "X-Request-ID": "req-create-1"}
    assert (await client.post("/api/jobs", headers=headers, json=JOB)).status_code == 201
    await client.patch("/api/jobs/audited", headers={**auth, "X-Request-ID": "req-edit-2"}, json={"timeout": 30})
    await client.post("/api/jobs/audited/stop", headers=auth)
    await client.delete("/api/jobs/audited", headers=auth)
    logs = (await client.get("/api/activity?jobId=audited", headers=auth)).json()["logs"]
    by_event = {e["event"]: e for e in logs}
    assert list(logs[0])[-2:] == ["requestId", "clientAddress"]  # after the spec's fields
    created, edited = by_event["jobs.create"], by_event["jobs.update"]
    assert (created["requestId"], edited["requestId"]) == ("req-create-1", "req-edit-2")
    assert created["clientAddress"] == "127.0.0.1"  # httpx's ASGI transport's client
    assert created["details"]["changes"]["schedule"] == [None, "0 6 * * *"]
    assert edited["details"]["changes"] == {"timeout": [None, 30]}
    assert by_event["jobs.stop"]["details"]["changes"] == {"enabled": [True, False]}
    assert by_event["jobs.delete"]["details"]["changes"]["timeout"] == [30, None]
    assert all(e["requestId"] for e in logs)  # without X-Request-ID, the id the middleware made


async def test_activity_filters_by_actor_event_job_and_time(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    moments = [datetime(2026, 1, 1, 10, tzinfo=UTC) + timedelta(hours=i) for i in range(4)]
    rows = [
        ("jobs.update", "user:1", "a"),
        ("jobs.trigger", "user:2", "a"),
        ("jobs.update", "user:2", "b"),
        ("jobs.stop", "user:1", "b"),
    ]
    for (event, actor, job), moment in zip(rows, moments, strict=True):
        entry = await activity_service.record(event=event, actor=actor, job_id=job)
        await Activity.filter(id=entry.id).update(created_at=moment)

    async def ids(query: str) -> list[int]:
        response = await client.get(f"/api/activity?{query}", headers=auth)
        assert response.status_code == 200, response.text
        return [e["id"] for e in response.json()["logs"]]

    assert await ids("actor=user:2") == [3, 2]
    assert await ids("actor=user:1&jobId=b") == [4]
    assert await ids("event=jobs.update&jobId=a") == [1]
    assert await ids("since=2026-01-01T11:00:00Z") == [4, 3, 2]
    assert await ids("since=2026-01-01T11:00:00Z&until=2026-01-01T13:00:00.000Z") == [3, 2]
    assert await ids("until=2026-01-01T11:00:00") == [1]  # no offset: UTC
    assert await ids("since=2026-01-01T14:00:00%2B02:00") == [4, 3]  # 12:00Z: converted, not compared as text
    assert await ids("since=2026-01-01T13:00:00%2B02:00&until=2026-01-01T07:30:00-05:00") == [3, 2]
    for query, error in [
        ("since=yesterday", "invalid_since"),
        ("until=2026-13-01", "invalid_until"),
        ("before=0", "invalid_before"),
        ("before=x", "invalid_before"),
        ("since=9999-12-31T23:00:00-05:00", "invalid_since"),  # past year 9999 in UTC
        ("event=jobs.nope", "invalid_event"),
    ]:
        response = await client.get(f"/api/activity?{query}", headers=auth)
        assert (response.status_code, response.json()["error"]) == (400, error), query
    body = await gql(
        client,
        auth,
        '{ activity(actor: "user:2", since: "2026-01-01T11:30:00Z") '
        "{ ... on ActivityPage { total logs { id requestId clientAddress } } } }",
    )
    assert body["data"]["activity"] == {"total": 1, "logs": [{"id": 3, "requestId": None, "clientAddress": None}]}
    bad = await gql(client, auth, '{ activity(since: "soon") { ... on ValidationFailed { code message } } }')
    assert bad["data"]["activity"]["code"] == "invalid_since"


async def test_keyset_pages_walk_the_same_entries_as_offset_pages(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    for i in range(23):
        await activity_service.record(event="jobs.update", actor="user:1", job_id="a", details={"i": i})
    by_offset = []
    for offset in range(0, 23, 5):
        page = (await client.get(f"/api/activity?limit=5&offset={offset}", headers=auth)).json()
        by_offset += [e["id"] for e in page["logs"]]
    by_cursor: list[int] = []
    query = "limit=5"
    while True:
        page = (await client.get(f"/api/activity?{query}", headers=auth)).json()
        assert page["total"] == 23  # what the filters match, whatever the cursor
        by_cursor += [e["id"] for e in page["logs"]]
        if page["nextBefore"] is None:
            break
        query = f"limit=5&before={page['nextBefore']}"
    assert by_cursor == by_offset == list(range(23, 0, -1))
    body = await gql(
        client, auth, "{ activity(limit: 5, before: 6) { ... on ActivityPage { nextBefore logs { id } } } }"
    )
    # The oldest five: a full page that is the last, so no cursor to an empty one.
    assert body["data"]["activity"] == {"nextBefore": None, "logs": [{"id": i} for i in (5, 4, 3, 2, 1)]}
    more = await gql(client, auth, "{ activity(limit: 5, before: 7) { ... on ActivityPage { nextBefore } } }")
    assert more["data"]["activity"] == {"nextBefore": 2}


async def test_run_logs_filter_and_page_by_keyset(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    await make_job(id="logged")
    base = datetime(2026, 1, 1, tzinfo=UTC)
    for i in range(12):
        await Run.create(
            job_id="logged",
            token=f"t{i}",
            triggered_by="scheduler" if i % 3 else "user:5",
            started_at=base + timedelta(minutes=i),
            completed_at=None if i == 11 else base + timedelta(minutes=i, seconds=1),
            result=None if i == 11 else ("error" if i % 4 == 0 else "success"),
        )

    async def ids(path: str) -> list[int]:
        response = await client.get(path, headers=auth)
        assert response.status_code == 200, response.text
        return [e["id"] for e in response.json()["logs"]]

    assert await ids("/api/jobs/logged/logs?result=error") == [9, 5, 1]
    assert await ids("/api/jobs/logged/logs?result=running") == [12]
    assert await ids("/api/jobs/logged/logs?triggeredBy=user:5") == [10, 7, 4, 1]
    assert await ids("/api/jobs/logged/logs?since=2026-01-01T00:10:00Z") == [12, 11]
    assert await ids("/api/jobs/logged/logs?until=2026-01-01T00:02:00Z&result=success") == [2]
    assert await ids("/api/jobs/logs/all?before=4&limit=2") == [3, 2]
    page = (await client.get("/api/jobs/logged/logs?limit=5&before=8", headers=auth)).json()
    assert ([e["id"] for e in page["logs"]], page["nextBefore"], page["total"]) == ([7, 6, 5, 4, 3], 3, 12)
    filtered = (await client.get("/api/jobs/logged/logs?triggeredBy=scheduler", headers=auth)).json()
    assert filtered["total"] == 8  # the filtered count, not the job's
    for query, error in [
        ("result=maybe", "invalid_result"),
        ("since=x", "invalid_since"),
        ("before=-1", "invalid_before"),
    ]:
        response = await client.get(f"/api/jobs/logged/logs?{query}", headers=auth)
        assert (response.status_code, response.json()["error"]) == (400, error)
    body = await gql(
        client,
        auth,
        '{ jobLogs(jobId: "logged", result: "error", before: 9) { ... on JobLogPage { total nextBefore logs { id } } } '
        'allJobLogs(triggeredBy: "user:5", limit: 2) { ... on JobLogPage { nextBefore logs { id } } } }',
    )
    assert body["data"] == {
        "jobLogs": {"total": 3, "nextBefore": None, "logs": [{"id": 5}, {"id": 1}]},
        "allJobLogs": {"nextBefore": 7, "logs": [{"id": 10}, {"id": 7}]},
    }


ADDED = "subscription A($events: [String!]) { activityAdded(events: $events) { event jobId actor details requestId } }"


@pytest.mark.slow
async def test_activity_added_streams_entries_made_on_another_instance(settings_factory: Any, tmp_path: Path) -> None:
    settings: Settings = settings_factory()
    a = ApiProcess(settings, tmp_path, free_port(), name="api-a")
    b = ApiProcess(settings, tmp_path, free_port(), name="api-b", embedded_worker="false")
    token = make_token(settings)
    headers = {"Authorization": f"Bearer {token}"}
    with a, b:
        async with await open_transport_ws(a, {"authorization": f"Bearer {token}"}) as ws:
            assert json.loads(await ws.recv())["type"] == "connection_ack"
            message = {
                "id": "1",
                "type": "subscribe",
                "payload": {"query": ADDED, "variables": {"events": ["jobs.create", "jobs.update"]}},
            }
            await ws.send(json.dumps(message))
            await asyncio.sleep(0.5)  # subscribed before the changes
            async with b.client() as client:
                await client.post("/api/jobs", headers={**headers, "X-Request-ID": "from-b"}, json=JOB)
                await client.post("/api/jobs/audited/trigger", headers=headers)  # not among the events asked for
                await client.patch("/api/jobs/audited", headers=headers, json={"description": "changed on b"})
            seen = []
            async with asyncio.timeout(10):
                while len(seen) < 2:
                    payload = json.loads(await ws.recv())["payload"]
                    assert "errors" not in payload, payload
                    seen.append(payload["data"]["activityAdded"])
    assert [(e["event"], e["jobId"], e["actor"]) for e in seen] == [
        ("jobs.create", "audited", "user:5"),
        ("jobs.update", "audited", "user:5"),
    ]
    assert seen[0]["requestId"] == "from-b"
    assert seen[1]["details"] == {"changes": {"description": ["", "changed on b"]}}
