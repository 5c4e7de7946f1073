"""The jobs endpoints of the spec: list, get, PATCH enabled, start and stop."""

from __future__ import annotations

import re

import httpx
import pytest

from app.platform.config import Settings
from tests.conftest import running_app
from tests.factories import make_job

ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
SPEC_FIELDS = ["id", "name", "description", "enabled", "running", "schedule", "lastRun", "nextRun", "lastResult",
               "lastDuration"]  # fmt: skip
BUILTINS = {
    "metadata-sync": ("Metadata Sync", "0 */6 * * *"),
    "cleanup-expired-tokens": ("Cleanup Expired Tokens", "0 0 * * *"),
    "cleanup-orphaned-files": ("Cleanup Orphaned Files", "0 0 * * 0"),
    "cleanup-job-logs": ("Cleanup Job Logs", "30 0 * * *"),
}
BAD_IDS = ["Metadata-Sync", "meta_sync", "a--b", "-ab", "ab-", "a b", "x" * 65, "%C3%A9t%C3%A9"]
PER_JOB = [("GET", ""), ("PATCH", ""), ("POST", "/start"), ("POST", "/stop"), ("POST", "/trigger"), ("GET", "/logs")]


def error_of(response: httpx.Response) -> str:
    body = response.json()
    assert body["success"] is False and isinstance(body["message"], str) and body["message"], body
    return str(body["error"])


@pytest.mark.postgres
async def test_list_returns_builtin_jobs_in_spec_shape(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    response = await client.get("/api/jobs", headers=auth)
    assert response.status_code == 200
    jobs = {j["id"]: j for j in response.json()}
    assert set(BUILTINS) <= set(jobs)
    for job_id, (name, schedule) in BUILTINS.items():
        job = jobs[job_id]
        assert list(job)[: len(SPEC_FIELDS)] == SPEC_FIELDS
        assert (job["name"], job["schedule"], job["enabled"], job["running"]) == (name, schedule, True, False)
        assert job["lastRun"] is None and job["lastResult"] is None and job["lastDuration"] is None


async def test_enabled_job_reports_its_enqueued_next_run(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    # The embedded worker reconciles at start-up; nextRun is the fire it enqueued.
    job = (await client.get("/api/jobs/cleanup-expired-tokens", headers=auth)).json()
    assert ISO_MS.match(job["nextRun"]), job
    assert job["nextRun"].endswith("T00:00:00.000Z")


async def test_get_one_job(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    response = await client.get("/api/jobs/metadata-sync", headers=auth)
    assert response.status_code == 200
    assert response.json()["id"] == "metadata-sync"
    assert response.json()["description"] == "Synchronizes game metadata from external sources"


@pytest.mark.parametrize("job_id", BAD_IDS)
@pytest.mark.parametrize(("method", "suffix"), PER_JOB)
async def test_invalid_job_id_is_400_on_every_route(
    client: httpx.AsyncClient, auth: dict[str, str], job_id: str, method: str, suffix: str
) -> None:
    body = {"enabled": True} if method == "PATCH" else None
    response = await client.request(method, f"/api/jobs/{job_id}{suffix}", headers=auth, json=body)
    assert response.status_code == 400
    assert error_of(response) == "invalid_job_id"


@pytest.mark.parametrize(("method", "suffix"), PER_JOB)
async def test_unknown_job_is_404_on_every_route(
    client: httpx.AsyncClient, auth: dict[str, str], method: str, suffix: str
) -> None:
    body = {"enabled": True} if method == "PATCH" else None
    response = await client.request(method, f"/api/jobs/no-such-job{suffix}", headers=auth, json=body)
    assert response.status_code == 404
    assert error_of(response) == "job_not_found"


@pytest.mark.postgres
async def test_disable_then_enable(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    off = await client.patch("/api/jobs/metadata-sync", headers=auth, json={"enabled": False})
    assert off.status_code == 200
    assert (off.json()["enabled"], off.json()["nextRun"]) == (False, None)
    on = await client.patch("/api/jobs/metadata-sync", headers=auth, json={"enabled": True})
    assert on.status_code == 200
    assert on.json()["enabled"] is True
    assert ISO_MS.match(on.json()["nextRun"])


@pytest.mark.parametrize(
    ("body", "expected_error"),
    [
        ({"enabled": "true"}, "validation_error"),
        ({"enabled": None}, "validation_error"),
        ({"enabled": 1}, "validation_error"),
        ({}, "validation_error"),
        ({"enabled": True, "name": "x"}, "field_not_editable"),  # a built-in job's name is its code's
        ({"enabled": True, "bogus": "x"}, "validation_error"),
        ([True], "validation_error"),
        ("enabled", "validation_error"),
    ],
)
async def test_patch_rejects_bad_bodies(
    client: httpx.AsyncClient, auth: dict[str, str], body: object, expected_error: str
) -> None:
    response = await client.patch("/api/jobs/metadata-sync", headers=auth, json=body)
    assert response.status_code == 400
    assert error_of(response) == expected_error
    assert (await client.get("/api/jobs/metadata-sync", headers=auth)).json()["enabled"] is True


@pytest.mark.parametrize("raw", [b"{bad json", b"", b'{"enabled": tru}'])
async def test_patch_rejects_malformed_json(client: httpx.AsyncClient, auth: dict[str, str], raw: bytes) -> None:
    headers = {**auth, "Content-Type": "application/json"}
    response = await client.patch("/api/jobs/metadata-sync", headers=headers, content=raw)
    assert response.status_code == 400
    assert error_of(response) in {"invalid_json", "validation_error"}


async def test_start_and_stop(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    stop = await client.post("/api/jobs/metadata-sync/stop", headers=auth)
    assert (stop.status_code, stop.json()) == (200, {"success": True, "message": "Job stopped successfully"})
    job = (await client.get("/api/jobs/metadata-sync", headers=auth)).json()
    assert (job["enabled"], job["nextRun"]) == (False, None)
    start = await client.post("/api/jobs/metadata-sync/start", headers=auth)
    assert (start.status_code, start.json()) == (200, {"success": True, "message": "Job started successfully"})
    job = (await client.get("/api/jobs/metadata-sync", headers=auth)).json()
    assert job["enabled"] is True and ISO_MS.match(job["nextRun"])


@pytest.mark.postgres
async def test_stopped_state_survives_a_restart_and_is_seen_by_another_instance(
    settings: Settings, auth: dict[str, str]
) -> None:
    async with running_app(settings) as (_, first):
        assert (await first.post("/api/jobs/metadata-sync/stop", headers=auth)).status_code == 200
        async with running_app(settings.model_copy(update={"embedded_worker": False})) as (_, second):
            seen = (await second.get("/api/jobs/metadata-sync", headers=auth)).json()
            assert (seen["enabled"], seen["nextRun"]) == (False, None)
    async with running_app(settings) as (_, restarted):
        job = (await restarted.get("/api/jobs/metadata-sync", headers=auth)).json()
        assert (job["enabled"], job["nextRun"]) == (False, None)


async def test_builtin_registration_keeps_a_persisted_enabled_flag(settings: Settings, auth: dict[str, str]) -> None:
    async with running_app(settings) as (_, client):
        await client.patch("/api/jobs/cleanup-orphaned-files", headers=auth, json={"enabled": False})
    async with running_app(settings) as (_, client):
        jobs = {j["id"]: j for j in (await client.get("/api/jobs", headers=auth)).json()}
        assert jobs["cleanup-orphaned-files"]["enabled"] is False
        assert sum(1 for j in jobs if j in BUILTINS) == len(BUILTINS)


async def test_extra_jobs_are_listed_in_id_order(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    await make_job(id="aaa-first")
    ids = [j["id"] for j in (await client.get("/api/jobs", headers=auth)).json()]
    assert ids == sorted(ids) and ids[0] == "aaa-first"
