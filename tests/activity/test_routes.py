"""`GET /api/activity`: the audit log of job management operations, its filters and its page bounds."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from app.activity import service as activity_service
from app.platform.config import Settings
from tests.conftest import make_token

ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
JOB = "metadata-sync"


def error_of(response: httpx.Response) -> str:
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["success"] is False and isinstance(body["message"], str) and body["message"], body
    return str(body["error"])


async def manage(client: httpx.AsyncClient, auth: dict[str, str], job_id: str = JOB) -> None:
    """The four audited operations of the spec, in order: update, start, stop, trigger."""
    steps = [
        client.patch(f"/api/jobs/{job_id}", json={"enabled": False}, headers=auth),
        client.post(f"/api/jobs/{job_id}/start", headers=auth),
        client.post(f"/api/jobs/{job_id}/stop", headers=auth),
        client.post(f"/api/jobs/{job_id}/trigger", headers=auth),
    ]
    for step in steps:
        response = await step
        assert response.status_code == 200, response.text


async def activity(client: httpx.AsyncClient, auth: dict[str, str], **params: Any) -> httpx.Response:
    return await client.get("/api/activity", params=params, headers=auth)


async def test_management_operations_are_logged_newest_first(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    await manage(client, auth)
    response = await activity(client, auth)
    assert response.status_code == 200, response.text
    page = response.json()
    assert [e["event"] for e in page["logs"]] == ["jobs.trigger", "jobs.stop", "jobs.start", "jobs.update"]
    assert page["total"] == 4
    ids = [e["id"] for e in page["logs"]]
    assert ids == sorted(ids, reverse=True)
    for entry in page["logs"]:
        assert entry["actor"] == "user:5"
        assert entry["jobId"] == JOB
        assert ISO_MS.match(entry["createdAt"]), entry["createdAt"]
    stamps = [e["createdAt"] for e in page["logs"]]
    assert stamps == sorted(stamps, reverse=True)


async def test_update_entry_records_the_change(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    await manage(client, auth)
    (update,) = (await activity(client, auth, event="jobs.update")).json()["logs"]
    assert update["details"] == {"enabled": False, "previous": True, "changes": {"enabled": [True, False]}}


async def test_actor_is_the_token_subject(client: httpx.AsyncClient, settings: Settings) -> None:
    other = {"Authorization": f"Bearer {make_token(settings, sub='42')}"}
    response = await client.post(f"/api/jobs/{JOB}/stop", headers=other)
    assert response.status_code == 200, response.text
    logs = (await activity(client, other)).json()["logs"]
    assert [(e["event"], e["actor"]) for e in logs] == [("jobs.stop", "user:42")]


async def test_filter_by_event(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    await manage(client, auth)
    for event in ("jobs.update", "jobs.start", "jobs.stop", "jobs.trigger"):
        page = (await activity(client, auth, event=event)).json()
        assert page["total"] == 1, (event, page)
        assert [e["event"] for e in page["logs"]] == [event]
    empty = (await activity(client, auth, event="jobs.delete")).json()
    assert empty["logs"] == [] and empty["total"] == 0


async def test_filter_by_job_id(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    await manage(client, auth)
    other = await client.patch("/api/jobs/cleanup-expired-tokens", json={"enabled": False}, headers=auth)
    assert other.status_code == 200
    assert (await activity(client, auth)).json()["total"] == 5
    mine = (await activity(client, auth, jobId=JOB)).json()
    assert mine["total"] == 4 and {e["jobId"] for e in mine["logs"]} == {JOB}
    theirs = (await activity(client, auth, jobId="cleanup-expired-tokens")).json()
    assert theirs["total"] == 1
    assert [(e["event"], e["jobId"]) for e in theirs["logs"]] == [("jobs.update", "cleanup-expired-tokens")]
    both = (await activity(client, auth, jobId=JOB, event="jobs.update")).json()
    assert [(e["event"], e["jobId"]) for e in both["logs"]] == [("jobs.update", JOB)]
    assert (await activity(client, auth, jobId="no-such-job")).json()["total"] == 0


async def test_page_shape_and_default_limit(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    for i in range(55):
        await activity_service.record(event="jobs.update", actor="user:1", job_id=JOB, details={"i": i})
    page = (await activity(client, auth)).json()
    assert list(page) == ["logs", "total", "limit", "offset", "nextBefore"]  # the runs' page shape, plus the cursor
    assert (page["total"], page["limit"], page["offset"], len(page["logs"])) == (55, 50, 0, 50)
    assert page["logs"][0]["details"] == {"i": 54}
    assert page["nextBefore"] == page["logs"][-1]["id"]
    full = (await activity(client, auth, limit=200)).json()
    assert (full["total"], full["limit"], len(full["logs"]), full["nextBefore"]) == (55, 200, 55, None)


async def test_limit_and_offset_page_through(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    await manage(client, auth)
    page = (await activity(client, auth, limit=2, offset=1)).json()
    assert (page["total"], page["limit"], page["offset"]) == (4, 2, 1)
    assert [e["event"] for e in page["logs"]] == ["jobs.stop", "jobs.start"]
    past = (await activity(client, auth, offset=10)).json()
    assert past["logs"] == [] and past["total"] == 4


@pytest.mark.parametrize("limit", ["201", "0", "-1", "abc", "1.5"])
async def test_bad_limit_is_400(client: httpx.AsyncClient, auth: dict[str, str], limit: str) -> None:
    response = await activity(client, auth, limit=limit)
    assert response.status_code == 400
    assert error_of(response) == "invalid_limit"
    assert "1 and 200" in response.json()["message"]


@pytest.mark.parametrize("offset", ["-1", "x"])
async def test_bad_offset_is_400(client: httpx.AsyncClient, auth: dict[str, str], offset: str) -> None:
    response = await activity(client, auth, offset=offset)
    assert response.status_code == 400
    assert error_of(response) == "invalid_offset"


async def test_unknown_event_is_400(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    response = await activity(client, auth, event="foo")
    assert response.status_code == 400
    assert error_of(response) == "invalid_event"
    assert "jobs.update" in response.json()["message"]


async def test_auth_is_required(client: httpx.AsyncClient, settings: Settings) -> None:
    response = await client.get("/api/activity")
    assert response.status_code == 401
    assert error_of(response) == "missing_token"
    assert response.headers["www-authenticate"].startswith("Bearer")
    weak = {"Authorization": f"Bearer {make_token(settings, permissions=['billing.read'])}"}
    forbidden = await client.get("/api/activity", headers=weak)
    assert forbidden.status_code == 403
    assert error_of(forbidden) == "forbidden"


async def test_rejected_operations_are_not_logged(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    assert (await client.patch(f"/api/jobs/{JOB}", json={"enabled": "maybe"}, headers=auth)).status_code == 400
    assert (await client.post("/api/jobs/no-such-job/stop", headers=auth)).status_code == 404
    assert (await client.post(f"/api/jobs/{JOB}/stop")).status_code == 401
    assert (await activity(client, auth)).json()["total"] == 0
