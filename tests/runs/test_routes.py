"""Trigger now and the execution logs, through the real embedded arq worker."""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest

from app.data.runs import Run
from tests.factories import make_job, wait_for_logs, wait_until

ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.mark.postgres
async def test_trigger_runs_the_job_and_records_it(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    await make_job(id="quick", payload={"seconds": 0.05, "summary": "Synced 150 games"})
    response = await client.post("/api/jobs/quick/trigger", headers=auth)
    assert (response.status_code, response.json()) == (200, {"success": True, "message": "Job triggered successfully"})
    [entry] = await wait_for_logs(client, "quick", auth)
    assert list(entry) == [
        *["id", "jobId", "startedAt", "completedAt", "duration", "result", "triggeredBy", "details"],  # the spec's
        *["attempt", "fireAt", "payload"],
    ]
    assert (entry["attempt"], entry["fireAt"]) == (1, None)  # a trigger is not a scheduled fire
    assert entry["payload"] == {"seconds": 0.05, "summary": "Synced 150 games"}  # the job's: none was sent
    assert (entry["jobId"], entry["result"], entry["triggeredBy"], entry["details"]) == (
        "quick",
        "success",
        "user:5",
        "Synced 150 games",
    )
    assert ISO_MS.match(entry["startedAt"]) and ISO_MS.match(entry["completedAt"])
    assert entry["duration"] >= 50
    # A run is closed in the database, then its lease released: `running: false` guarantees the result
    # is readable, and a read between the two (a fraction of a millisecond) still sees the lease.
    await wait_until(lambda: _idle(client, "quick", auth), timeout=2)
    job = (await client.get("/api/jobs/quick", headers=auth)).json()
    assert (job["lastRun"], job["lastResult"], job["lastDuration"], job["running"]) == (
        entry["startedAt"],
        "success",
        entry["duration"],
        False,
    )


async def test_trigger_while_running_is_409_and_running_is_reported(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    await make_job(id="slow", payload={"seconds": 1.0})
    assert (await client.post("/api/jobs/slow/trigger", headers=auth)).status_code == 200
    again = await client.post("/api/jobs/slow/trigger", headers=auth)
    assert again.status_code == 409
    assert again.json() == {"success": False, "error": "already_running", "message": "Job is already running"}
    assert (await client.get("/api/jobs/slow", headers=auth)).json()["running"] is True
    await wait_for_logs(client, "slow", auth)
    # The run is closed in the database a moment before its lease is released (see the test above).
    await wait_until(lambda: _idle(client, "slow", auth), timeout=2)
    assert (await client.get("/api/jobs/slow", headers=auth)).json()["running"] is False
    assert (await client.post("/api/jobs/slow/trigger", headers=auth)).status_code == 200


@pytest.mark.postgres
async def test_concurrent_triggers_give_one_run(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    await make_job(id="racy", payload={"seconds": 0.3})
    responses = await asyncio.gather(*(client.post("/api/jobs/racy/trigger", headers=auth) for _ in range(100)))
    codes = sorted(r.status_code for r in responses)
    assert codes.count(200) == 1 and codes.count(409) == 99
    await wait_for_logs(client, "racy", auth)
    await asyncio.sleep(0.3)
    assert await Run.filter(job_id="racy").count() == 1


async def test_disabled_job_can_still_be_triggered(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    await make_job(id="off", enabled=False)
    assert (await client.post("/api/jobs/off/trigger", headers=auth)).status_code == 200
    [entry] = await wait_for_logs(client, "off", auth)
    assert entry["result"] == "success"


@pytest.mark.postgres
async def test_failing_handler_is_recorded_as_error_without_a_trace(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    await make_job(id="broken", type="test_fail", payload={"message": "disk full"})
    await client.post("/api/jobs/broken/trigger", headers=auth)
    [entry] = await wait_for_logs(client, "broken", auth)
    assert (entry["result"], entry["details"]) == ("error", "disk full")
    job = (await client.get("/api/jobs/broken", headers=auth)).json()
    assert (job["lastResult"], job["running"]) == ("error", False)


async def test_timeout_ends_the_run_as_error(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    await make_job(id="stuck", type="test_block", timeout_seconds=0.3)
    await client.post("/api/jobs/stuck/trigger", headers=auth)
    [entry] = await wait_for_logs(client, "stuck", auth)
    assert (entry["result"], entry["details"]) == ("error", "Timed out after 0.3 s")


@pytest.mark.postgres
async def test_logs_are_newest_first_and_paginated(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    await make_job(id="many")
    for _ in range(3):
        await client.post("/api/jobs/many/trigger", headers=auth)
        await wait_until(lambda: _idle(client, "many", auth))
    page = (await client.get("/api/jobs/many/logs?limit=2&offset=0", headers=auth)).json()
    assert (page["total"], page["limit"], page["offset"], len(page["logs"])) == (3, 2, 0, 2)
    rest = (await client.get("/api/jobs/many/logs?limit=2&offset=2", headers=auth)).json()
    ids = [e["id"] for e in page["logs"] + rest["logs"]]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 3
    default = (await client.get("/api/jobs/many/logs", headers=auth)).json()
    assert (default["limit"], default["offset"]) == (50, 0)
    everything = (await client.get("/api/jobs/logs/all", headers=auth)).json()
    assert (everything["limit"], everything["offset"], everything["total"]) == (100, 0, 3)
    assert (await client.get("/api/jobs/logs/all?limit=200", headers=auth)).status_code == 200
    assert (await client.get("/api/jobs/many/logs?limit=100", headers=auth)).status_code == 200


async def _idle(client: httpx.AsyncClient, job_id: str, auth: dict[str, str]) -> bool:
    return not (await client.get(f"/api/jobs/{job_id}", headers=auth)).json()["running"]


@pytest.mark.parametrize(
    ("path", "query", "error", "bound"),
    [
        ("/api/jobs/metadata-sync/logs", "limit=101", "invalid_limit", "between 1 and 100"),
        ("/api/jobs/metadata-sync/logs", "limit=0", "invalid_limit", "between 1 and 100"),
        ("/api/jobs/metadata-sync/logs", "limit=-3", "invalid_limit", "between 1 and 100"),
        ("/api/jobs/metadata-sync/logs", "limit=ten", "invalid_limit", "between 1 and 100"),
        ("/api/jobs/metadata-sync/logs", "limit=1.5", "invalid_limit", "between 1 and 100"),
        ("/api/jobs/metadata-sync/logs", "offset=-1", "invalid_offset", "0 or more"),
        ("/api/jobs/metadata-sync/logs", "offset=x", "invalid_offset", "0 or more"),
        ("/api/jobs/logs/all", "limit=201", "invalid_limit", "between 1 and 200"),
        ("/api/jobs/logs/all", "limit=0", "invalid_limit", "between 1 and 200"),
        ("/api/jobs/logs/all", "limit=", "invalid_limit", "between 1 and 200"),
        ("/api/jobs/logs/all", "offset=-5", "invalid_offset", "0 or more"),
        ("/api/jobs/logs/all", "offset=9223372036854775808", "invalid_offset", "at most 10000; page deeper"),
        ("/api/jobs/logs/all", "offset=10001", "invalid_offset", "at most 10000"),
        ("/api/activity", "offset=10001", "invalid_offset", "at most 10000"),
        ("/api/jobs/metadata-sync/logs", "offset=99999999999999999999", "invalid_offset", "at most"),
        ("/api/activity", "offset=9223372036854775808", "invalid_offset", "at most"),
        ("/api/activity", "jobId=Bad_Id", "invalid_job_id", "Invalid job ID format"),
    ],
)
async def test_bad_paging_is_400_naming_the_bounds(
    client: httpx.AsyncClient, auth: dict[str, str], path: str, query: str, error: str, bound: str
) -> None:
    response = await client.get(f"{path}?{query}", headers=auth)
    assert response.status_code == 400
    body = response.json()
    assert (body["success"], body["error"]) == (False, error)
    assert bound in body["message"]
