"""PATCH /api/jobs/{jobId} and GraphQL updateJob as an edit: any field, validated as on creation, audited with
each field's before and after, guarded by the job's version (ETag / If-Match, expectedVersion)."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

import httpx
import pytest

from app.data.activity import Activity
from app.data.jobs import Job
from app.data.runs import Run
from app.jobs import service as jobs_service
from app.platform.schedule import validate_schedule
from tests.factories import wait_until
from tests.graphql.test_api import gql

pytestmark = pytest.mark.postgres

CREATE = {
    "id": "report",
    "name": "Report",
    "type": "test_sleep",
    "schedule": "0 6 * * *",
    "payload": {"seconds": 0.0, "summary": "done"},
}
UPDATE = """mutation U($id: ID!, $input: UpdateJobInput, $enabled: Boolean, $v: Int) {
  updateJob(id: $id, input: $input, enabled: $enabled, expectedVersion: $v) {
    __typename
    ... on Job { id schedule timezone version nextRun }
    ... on UserError { code message }
    ... on VersionConflict { currentVersion }
    ... on ValidationFailed { fields { field message } }
  }
}"""


async def _create(client: httpx.AsyncClient, auth: dict[str, str], **fields: Any) -> dict[str, Any]:
    response = await client.post("/api/jobs", headers=auth, json={**CREATE, **fields})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def _entries(job_id: str) -> list[Activity]:
    return list(await Activity.filter(job_id=job_id, event="jobs.update").order_by("id"))


async def test_an_edit_changes_the_fields_moves_the_fire_and_records_each_change(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    created = await _create(client, auth)
    got = await client.get("/api/jobs/report", headers=auth)
    assert got.headers["etag"] == '"1"' and got.json()["version"] == 1
    before = datetime.now(UTC)
    edit = {"schedule": "30 */2 * * *", "timezone": "Europe/Paris", "timeout": 90, "description": "every 2 h"}
    response = await client.patch("/api/jobs/report", headers=auth, json=edit)
    after = datetime.now(UTC)
    assert response.status_code == 200, response.text
    job = response.json()
    assert response.headers["etag"] == '"2"' and job["version"] == 2
    assert (job["schedule"], job["timezone"], job["timeout"], job["description"]) == (
        "30 */2 * * *",
        "Europe/Paris",
        90,
        "every 2 h",
    )
    # nextRun in the answer is the new schedule's next instant, in its timezone.
    schedule = validate_schedule("30 */2 * * *", "Europe/Paris")
    assert schedule.next_after(before) <= _instant(job["nextRun"]) <= schedule.next_after(after)
    assert job["nextRun"] != created["nextRun"]
    assert (await client.get("/api/jobs/report", headers=auth)).json() == job
    [entry] = await _entries("report")
    assert entry.actor == "user:5"
    assert entry.details == {
        "changes": {
            "description": ["", "every 2 h"],
            "schedule": ["0 6 * * *", "30 */2 * * *"],
            "timezone": [None, "Europe/Paris"],
            "timeout": [None, 90],
        }
    }
    # An interval replaces the schedule; policy fields are edited as created.
    response = await client.patch(
        "/api/jobs/report", headers=auth, json={"interval": "90m", "retry": {"maxAttempts": 3}, "overlap": "buffer_one"}
    )
    assert response.status_code == 200, response.text
    job = response.json()
    assert (job["schedule"], job["retry"]["maxAttempts"], job["overlap"], job["version"]) == (
        "@every 90m",
        3,
        "buffer_one",
        3,
    )
    changes = (await _entries("report"))[-1].details["changes"]
    assert set(changes) == {"schedule", "retry", "overlap"}
    assert changes["retry"][0] is None and changes["retry"][1]["maxAttempts"] == 3


async def test_an_edit_that_changes_nothing_writes_nothing(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    await _create(client, auth)
    response = await client.patch("/api/jobs/report", headers=auth, json={"schedule": "0 6 * * *", "name": "Report"})
    assert response.status_code == 200
    assert response.json()["version"] == 1
    assert await _entries("report") == []


@pytest.mark.parametrize(
    ("edit", "error", "field"),
    [
        ({"schedule": "61 * * * *"}, "invalid_schedule", None),
        ({"interval": "5x"}, "invalid_interval", None),
        ({"interval": "1h", "schedule": "@daily"}, "validation_error", None),
        ({"timezone": "Mars/Olympus"}, "invalid_timezone", None),
        ({"timeout": "30"}, "validation_error", "timeout"),
        ({"name": ""}, "validation_error", "name"),
        ({"payload": {"seconds": -1}}, "validation_error", "payload.seconds"),
        ({"overlap": "sometimes"}, "validation_error", "overlap"),
        ({"retry": {"maxAttempts": 50}}, "validation_error", "retry.maxAttempts"),
        ({"colour": "red"}, "validation_error", "colour"),
        ({"type": "test_fail"}, "field_not_editable", "type"),
        ({"id": "other"}, "field_not_editable", "id"),
        ({}, "validation_error", None),
    ],
)
async def test_a_bad_edit_gets_the_creations_400_and_changes_nothing(
    client: httpx.AsyncClient, auth: dict[str, str], edit: dict[str, Any], error: str, field: str | None
) -> None:
    created = await _create(client, auth)
    response = await client.patch("/api/jobs/report", headers=auth, json=edit)
    assert response.status_code == 400, response.text
    body = response.json()
    assert (body["success"], body["error"]) == (False, error)
    if field is not None:
        assert field in [d["field"] for d in body["details"]]
    # The same value is refused at creation alike: one validator.
    if error != "field_not_editable" and edit and "colour" not in edit:
        twin_body = {**{k: v for k, v in CREATE.items() if k != "schedule"}, "schedule": "0 6 * * *", "id": "twin"}
        if "interval" in edit and "schedule" not in edit:
            del twin_body["schedule"]
        twin = await client.post("/api/jobs", headers=auth, json={**twin_body, **edit})
        assert (twin.status_code, twin.json()["error"]) == (400, error)
    assert (await client.get("/api/jobs/report", headers=auth)).json() == created
    assert await _entries("report") == []


async def test_a_built_in_jobs_timing_is_editable_and_survives_a_restart(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    edit = {"schedule": "15 */4 * * *", "timezone": "America/New_York", "timeout": 1200}
    response = await client.patch("/api/jobs/metadata-sync", headers=auth, json=edit)
    assert response.status_code == 200, response.text
    for name, value in [("name", "Mine"), ("description", "mine"), ("payload", {}), ("type", "metadata_sync")]:
        refused = await client.patch("/api/jobs/metadata-sync", headers=auth, json={name: value})
        assert (refused.status_code, refused.json()["error"]) == (400, "field_not_editable")
        assert name in refused.json()["message"]
        assert refused.json()["details"][0]["field"] == name
    # Start-up registration (every process runs it) leaves an edited built-in job as it is.
    await jobs_service.register_builtin_jobs()
    job = (await client.get("/api/jobs/metadata-sync", headers=auth)).json()
    assert (job["schedule"], job["timezone"], job["timeout"], job["name"]) == (
        "15 */4 * * *",
        "America/New_York",
        1200,
        "Metadata Sync",
    )


async def test_if_match_guards_an_edit(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    await _create(client, auth)
    etag = (await client.get("/api/jobs/report", headers=auth)).headers["etag"]
    first = await client.patch("/api/jobs/report", headers={**auth, "If-Match": etag}, json={"timeout": 10})
    assert first.status_code == 200 and first.headers["etag"] == '"2"'
    # Somebody else's read: the version it saw is gone.
    stale = await client.patch("/api/jobs/report", headers={**auth, "If-Match": etag}, json={"timeout": 20})
    assert stale.status_code == 412
    assert stale.json()["error"] == "precondition_failed"
    for bad in ['W/"2"', '"1", "3"', "2", "garbage"]:  # weak, stale, not an entity tag: nothing matches
        refused = await client.patch("/api/jobs/report", headers={**auth, "If-Match": bad}, json={"timeout": 20})
        assert refused.status_code == 412, bad
    # The enable/disable body is guarded alike.
    off = await client.patch("/api/jobs/report", headers={**auth, "If-Match": etag}, json={"enabled": False})
    assert off.status_code == 412
    job = (await client.get("/api/jobs/report", headers=auth)).json()
    assert (job["timeout"], job["enabled"], job["version"]) == (10, True, 2)
    fresh = await client.patch("/api/jobs/report", headers={**auth, "If-Match": '"2"'}, json={"enabled": False})
    assert fresh.status_code == 200 and fresh.headers["etag"] == '"3"'
    anyone = await client.patch("/api/jobs/report", headers={**auth, "If-Match": "*"}, json={"timeout": 30})
    assert anyone.status_code == 200 and anyone.json()["version"] == 4
    listed = {**auth, "If-Match": 'W/"4", "9", "4"'}  # a list matches when one strong tag is current
    assert (await client.patch("/api/jobs/report", headers=listed, json={"timeout": 40})).json()["version"] == 5
    gone = await client.patch("/api/jobs/nope", headers={**auth, "If-Match": '"1"'}, json={"timeout": 30})
    assert gone.status_code == 404


async def test_enabling_with_an_edit_schedules_the_next_fire(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    await _create(client, auth, enabled=False)
    assert (await client.get("/api/jobs/report", headers=auth)).json()["nextRun"] is None
    response = await client.patch("/api/jobs/report", headers=auth, json={"enabled": True, "timeout": 30})
    job = response.json()
    assert (job["enabled"], job["timeout"]) == (True, 30)
    schedule = validate_schedule("0 6 * * *", "UTC")
    assert job["nextRun"] is not None and _instant(job["nextRun"]) == schedule.next_after(datetime.now(UTC))
    off = (await client.patch("/api/jobs/report", headers=auth, json={"enabled": False, "timeout": 31})).json()
    assert off["nextRun"] is None


async def test_a_run_does_not_change_the_version(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    await _create(client, auth)
    assert (await client.post("/api/jobs/report/trigger", headers=auth)).status_code == 200

    async def ran() -> bool:
        return (await client.get("/api/jobs/report", headers=auth)).json()["lastResult"] is not None

    await wait_until(ran)
    got = await client.get("/api/jobs/report", headers=auth)
    assert got.headers["etag"] == '"1"'


async def test_graphql_update_job_edits_with_expected_version(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    await _create(client, auth)
    body = await gql(client, auth, UPDATE, id="report", input={"interval": "2h", "catchUp": {"window": "1m"}}, v=1)
    assert not body.get("errors"), body
    assert body["data"]["updateJob"]["schedule"] == "@every 2h"
    assert body["data"]["updateJob"]["version"] == 2
    stale = (await gql(client, auth, UPDATE, id="report", input={"interval": "3h"}, v=1))["data"]["updateJob"]
    assert (stale["__typename"], stale["code"], stale["currentVersion"]) == (
        "VersionConflict",
        "precondition_failed",
        2,
    )
    bad = (await gql(client, auth, UPDATE, id="report", input={"schedule": "nope"}))["data"]["updateJob"]
    assert (bad["__typename"], bad["code"]) == ("ValidationFailed", "invalid_schedule")
    fields = (await gql(client, auth, UPDATE, id="report", input={"payload": {"seconds": -1}}))["data"]["updateJob"]
    assert [f["field"] for f in fields["fields"]] == ["payload.seconds"]
    missing = (await gql(client, auth, UPDATE, id="nope", enabled=True))["data"]["updateJob"]
    assert (missing["__typename"], missing["code"]) == ("JobNotFound", "job_not_found")
    both = await gql(client, auth, UPDATE, id="report", input={"timezone": "Asia/Tokyo"}, enabled=False)
    assert not both.get("errors"), both
    job = (await client.get("/api/jobs/report", headers=auth)).json()
    assert (job["schedule"], job["timezone"], job["enabled"], job["catchUp"]["window"]) == (
        "@every 2h",
        "Asia/Tokyo",
        False,
        "1m",
    )
    nothing = (await gql(client, auth, UPDATE, id="report"))["data"]["updateJob"]
    assert nothing["__typename"] == "ValidationFailed"


@pytest.mark.slow
async def test_an_edit_moves_a_running_schedule_without_a_double_or_a_gap(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    """A job firing every second is edited to every two seconds while the embedded worker runs it: every fire
    before the edit is of the old schedule, every fire after it of the new one from the answer's nextRun on,
    each once, none left out."""
    await _create(client, auth, id="tick", schedule="@every 1s")

    async def fired(n: int) -> bool:
        return await Job.filter(id="tick", last_run_at__isnull=False).exists() and len(await _fires("tick")) >= n

    await wait_until(lambda: fired(2), timeout=15)
    sent = datetime.now(UTC)
    response = await client.patch("/api/jobs/tick", headers=auth, json={"interval": "2s"})
    assert response.status_code == 200
    first = _instant(response.json()["nextRun"])
    assert sent < first <= sent + timedelta(seconds=2)
    await wait_until(lambda: _fired_since(first, 3), timeout=15)
    await client.post("/api/jobs/tick/stop", headers=auth)
    await wait_until(lambda: _idle(client, auth), timeout=10)
    fires = await _fires("tick")
    assert max(Counter(fires).values()) == 1, "a fire ran twice"
    old = [f for f in fires if f < first]
    new = [f for f in fires if f >= first]
    assert all(f <= sent for f in old), "a fire of the old schedule ran after the edit"
    assert new[0] == first
    assert all(b - a == timedelta(seconds=2) for a, b in pairwise(new)), new


async def _fires(job_id: str) -> list[datetime]:
    return sorted(r.fire_at for r in await Run.filter(job_id=job_id) if r.fire_at is not None)


async def _fired_since(first: datetime, count: int) -> bool:
    return len([f for f in await _fires("tick") if f >= first]) >= count


async def _idle(client: httpx.AsyncClient, auth: dict[str, str]) -> bool:
    return not (await client.get("/api/jobs/tick", headers=auth)).json()["running"]
