"""See before you save (schedule preview, a job's next fires) and run with a payload (trigger body, run record)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

import httpx
import pytest

from app.jobs import service as jobs_service
from app.platform.runtime import Runtime
from tests.factories import make_job, wait_for_logs
from tests.graphql.test_api import gql

pytestmark = pytest.mark.postgres
HOURLY = {"id": "hourly", "name": "H", "type": "test_sleep", "interval": "1h"}


def _instants(texts: list[str]) -> list[datetime]:
    return [datetime.fromisoformat(t.replace("Z", "+00:00")) for t in texts]


async def test_preview_lists_the_next_fires_as_the_engine_computes_them(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    before = datetime.now(UTC)
    response = await client.post("/api/schedules/preview", headers=auth, json={"interval": "90m", "count": 3})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["schedule"], body["timezone"]) == ("@every 90m", "UTC")
    fires = _instants(body["fires"])
    assert len(fires) == 3 and before < fires[0] <= before + timedelta(minutes=90)
    assert [b - a for a, b in pairwise(fires)] == [timedelta(minutes=90)] * 2
    cron = await client.post("/api/schedules/preview", headers=auth, json={"schedule": "0 9 * * 1-5", "count": None})
    fires = _instants(cron.json()["fires"])
    assert len(fires) == 10 and all(f.hour == 9 and f.minute == 0 and f.weekday() < 5 for f in fires)
    # The same as a created job's next fires.
    created = await client.post(
        "/api/jobs",
        headers=auth,
        json={"id": "weekday", "name": "W", "type": "test_sleep", "schedule": "0 9 * * 1-5", "timezone": "Asia/Tokyo"},
    )
    assert created.status_code == 201
    preview = await client.post(
        "/api/schedules/preview", headers=auth, json={"schedule": "0 9 * * 1-5", "timezone": "Asia/Tokyo", "count": 5}
    )
    nxt = await client.get("/api/jobs/weekday/fires/next?count=5", headers=auth)
    assert nxt.status_code == 200
    assert nxt.json() == {"jobId": "weekday", "fires": preview.json()["fires"]}
    assert nxt.json()["fires"][0] == created.json()["nextRun"]


async def test_preview_follows_daylight_saving_time(orm: Runtime) -> None:
    # 2027-03-28: Paris jumps from 02:00 to 03:00; 2027-10-31: from 03:00 back to 02:00.
    spring = Runtime(orm.settings, orm.redis, clock=lambda: datetime(2027, 3, 26, 12, tzinfo=UTC))
    preview = jobs_service.preview(spring, data={"schedule": "30 2 * * *", "timezone": "Europe/Paris", "count": 4})
    assert [f.isoformat() for f in preview.fires] == [
        "2027-03-27T01:30:00+00:00",  # 02:30 CET
        "2027-03-28T01:00:00+00:00",  # 02:30 does not exist that night: once, when the clock jumps (03:00 CEST)
        "2027-03-29T00:30:00+00:00",  # 02:30 CEST
        "2027-03-30T00:30:00+00:00",
    ]
    autumn = Runtime(orm.settings, orm.redis, clock=lambda: datetime(2027, 10, 30, 12, tzinfo=UTC))
    hourly = jobs_service.preview(autumn, data={"schedule": "0 * * * *", "timezone": "Europe/Paris", "count": 24})
    gaps = [b - a for a, b in pairwise(hourly.fires)]
    # The repeated hour's wall time (02:00) already fired: silent once, as the engine's schedule tests say.
    assert sorted(set(gaps)) == [timedelta(hours=1), timedelta(hours=2)] and gaps.count(timedelta(hours=2)) == 1


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"schedule": "61 * * * *"}, "invalid_schedule"),
        ({"interval": "500ms"}, "invalid_interval"),
        ({"schedule": "@daily", "interval": "1h"}, "validation_error"),
        ({}, "validation_error"),
        ({"schedule": "@daily", "timezone": "Nowhere/Land"}, "invalid_timezone"),
        ({"schedule": "@daily", "count": 101}, "validation_error"),
        ({"schedule": "@daily", "count": "3"}, "validation_error"),
        ({"schedule": "@daily", "count": 0}, "validation_error"),
        ({"schedule": "@daily", "extra": 1}, "validation_error"),
        (["@daily"], "validation_error"),
    ],
)
async def test_preview_refuses_what_creation_refuses(
    client: httpx.AsyncClient, auth: dict[str, str], body: object, error: str
) -> None:
    response = await client.post("/api/schedules/preview", headers=auth, json=body)
    assert (response.status_code, response.json()["error"]) == (400, error)


async def test_next_fires_of_a_job(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    await client.post(
        "/api/jobs", headers=auth, json={"id": "hourly", "name": "H", "type": "test_sleep", "interval": "1h"}
    )
    for bad in ["0", "101", "x", "1.5"]:
        response = await client.get(f"/api/jobs/hourly/fires/next?count={bad}", headers=auth)
        assert (response.status_code, response.json()["error"]) == (400, "invalid_count")
    assert (await client.get("/api/jobs/nope/fires/next", headers=auth)).status_code == 404
    fires = (await client.get("/api/jobs/hourly/fires/next", headers=auth)).json()["fires"]
    assert len(fires) == 10
    await client.post("/api/jobs/hourly/stop", headers=auth)
    assert (await client.get("/api/jobs/hourly/fires/next", headers=auth)).json()["fires"] == []


async def test_graphql_preview_and_next_fires_match_rest(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    await client.post(
        "/api/jobs", headers=auth, json={"id": "hourly", "name": "H", "type": "test_sleep", "interval": "1h"}
    )
    body = await gql(
        client,
        auth,
        '{ schedulePreview(schedule: "0 3 * * *", timezone: "Europe/Paris", count: 2) '
        "{ ... on SchedulePreview { schedule timezone fires } } "
        'job(id: "hourly") { nextFires(count: 3) { ... on NextFires { fires } } } }',
    )
    assert not body.get("errors"), body
    rest = await client.post(
        "/api/schedules/preview", headers=auth, json={"schedule": "0 3 * * *", "timezone": "Europe/Paris", "count": 2}
    )
    assert body["data"]["schedulePreview"] == rest.json()
    nxt = await client.get("/api/jobs/hourly/fires/next?count=3", headers=auth)
    assert body["data"]["job"]["nextFires"]["fires"] == nxt.json()["fires"]
    outcome = "{ __typename ... on UserError { code message } }"
    bad = await gql(client, auth, '{ schedulePreview(schedule: "nope") ' + outcome + " }")
    assert bad["data"]["schedulePreview"]["__typename"] == "ValidationFailed"
    assert bad["data"]["schedulePreview"]["code"] == "invalid_schedule"
    count = await gql(client, auth, '{ job(id: "hourly") { nextFires(count: 0) ' + outcome + " } }")
    assert count["data"]["job"]["nextFires"]["code"] == "invalid_count"


async def test_a_trigger_with_a_payload_runs_with_it_and_keeps_it(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    await make_job(id="greet", payload={"summary": "from the job"})
    response = await client.post("/api/jobs/greet/trigger", headers=auth, json={"payload": {"summary": "from me"}})
    assert response.status_code == 200, response.text
    [entry] = await wait_for_logs(client, "greet", auth)
    assert (entry["details"], entry["payload"]) == ("from me", {"seconds": 0.0, "summary": "from me"})
    # The job's own payload is untouched, and the next plain trigger uses it.
    job = (await client.get("/api/jobs/greet", headers=auth)).json()
    assert job["payload"] == {"summary": "from the job"}
    await client.post("/api/jobs/greet/trigger", headers=auth)
    entries = await wait_for_logs(client, "greet", auth, count=2)
    assert (entries[0]["details"], entries[0]["payload"]) == ("from the job", {"summary": "from the job"})


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"payload": {"seconds": -1}}, "payload.seconds"),
        ({"payload": {"seconds": "x"}}, "payload.seconds"),
        ({"payload": {"bogus": 1}}, "payload.bogus"),
        ({"payload": []}, "payload"),
        ({"payloads": {}}, "payloads"),
    ],
)
async def test_a_bad_trigger_payload_is_refused_field_by_field(
    client: httpx.AsyncClient, auth: dict[str, str], body: dict[str, Any], field: str
) -> None:
    await make_job(id="greet")
    response = await client.post("/api/jobs/greet/trigger", headers=auth, json=body)
    assert response.status_code == 400, response.text
    assert field in [d["field"] for d in response.json()["details"]]
    logs = (await client.get("/api/jobs/greet/logs", headers=auth)).json()
    assert logs["total"] == 0  # nothing ran


async def test_graphql_trigger_with_a_payload(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    await make_job(id="greet")
    body = await gql(
        client,
        auth,
        'mutation { triggerJob(id: "greet", payload: {summary: "via graphql"}) '
        "{ ... on JobActionResult { success } } }",
    )
    assert body["data"]["triggerJob"]["success"] is True, body
    [entry] = await wait_for_logs(client, "greet", auth)
    assert entry["details"] == "via graphql"
    logs = await gql(client, auth, '{ jobLogs(jobId: "greet") { ... on JobLogPage { logs { payload } } } }')
    assert logs["data"]["jobLogs"]["logs"][0]["payload"] == {"seconds": 0.0, "summary": "via graphql"}
    bad = await gql(
        client,
        auth,
        'mutation { triggerJob(id: "greet", payload: {seconds: -1}) { ... on ValidationFailed { fields { field } } } }',
    )
    assert bad["data"]["triggerJob"] == {"fields": [{"field": "payload.seconds"}]}
