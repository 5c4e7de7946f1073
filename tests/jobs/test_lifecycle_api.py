"""The run-lifecycle fields, cancel and skipped fires over REST and GraphQL: the same data, the same errors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from app.data.runs import Run
from app.data.skipped_fires import SkippedFire
from app.platform.runtime import Runtime
from tests.conftest import make_token
from tests.factories import make_job, wait_until
from tests.graphql.test_api import JOB_FIELDS, gql, on_job, on_result, user_error
from tests.jobs.test_create_delete import error, new_job

POLICY = {
    "retry": {"maxAttempts": 3, "backoff": "30s", "maxBackoff": "10m", "multiplier": 2.5, "jitter": 0.2},
    "overlap": "buffer_one",
    "catchUp": {"window": "1h30m", "policy": "none"},
    "pauseAfterFailures": 4,
}
SHOWN = {
    **POLICY,
    "retry": {"maxAttempts": 3, "backoff": "30s", "maxBackoff": "10m", "multiplier": 2.5, "jitter": 0.2},
    "consecutiveFailures": 0,
    "cancelling": False,
    "lastSkippedFire": None,
}
DEFAULTS = {
    "retry": None,
    "overlap": "skip",
    "catchUp": {"window": "5m", "policy": "latest"},  # MISFIRE_GRACE_SECONDS' default
    "pauseAfterFailures": None,
    "consecutiveFailures": 0,
    "cancelling": False,
    "lastSkippedFire": None,
}
CREATE = f"mutation C($input: CreateJobInput!) {{ createJob(input: $input) {on_job(JOB_FIELDS)} }}"


def policy_of(job: dict[str, Any]) -> dict[str, Any]:
    return {k: job[k] for k in DEFAULTS}


async def test_policy_fields_round_trip_through_rest_and_graphql(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    created = await client.post("/api/jobs", headers=auth, json=new_job(**POLICY))
    assert created.status_code == 201, created.text
    job = created.json()
    assert policy_of(job) == SHOWN
    assert list(job)[-8:-1] == list(DEFAULTS)  # after the spec's fields and the earlier additions, before `version`
    assert policy_of((await client.get("/api/jobs/nightly-report", headers=auth)).json()) == SHOWN
    listed = {j["id"]: j for j in (await client.get("/api/jobs", headers=auth)).json()}
    assert policy_of(listed["nightly-report"]) == SHOWN
    # The same input through GraphQL gives the same job object.
    body = await gql(client, auth, CREATE, input={**new_job(**POLICY), "id": "graphql-twin"})
    assert not body.get("errors"), body
    assert policy_of(body["data"]["createJob"]) == SHOWN
    fetched = await gql(client, auth, f'{{ job(id: "nightly-report") {{ {JOB_FIELDS} }} }}')
    assert fetched["data"]["job"] == {k: job[k] for k in fetched["data"]["job"]}


async def test_left_out_the_policy_keeps_todays_behaviour(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    created = await client.post("/api/jobs", headers=auth, json=new_job())
    assert policy_of(created.json()) == DEFAULTS
    defaulted = new_job(id="explicit", retry={"maxAttempts": 2}, catchUp={"policy": "latest"})
    job = (await client.post("/api/jobs", headers=auth, json=defaulted)).json()
    # The documented defaults: backoff 10s, at most 1h, doubling, no jitter; the global window.
    assert job["retry"] == {"maxAttempts": 2, "backoff": "10s", "maxBackoff": "1h", "multiplier": 2.0, "jitter": 0.0}
    assert job["catchUp"] == {"window": "5m", "policy": "latest"}
    slow = new_job(id="long", retry={"maxAttempts": 2, "backoff": "2h"})
    long = (await client.post("/api/jobs", headers=auth, json=slow)).json()
    assert long["retry"]["maxBackoff"] == "2h"  # never shorter than the backoff itself


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"retry": {"maxAttempts": 0}}, "retry.maxAttempts"),
        ({"retry": {"maxAttempts": 21}}, "retry.maxAttempts"),
        ({"retry": {"backoff": "1s"}}, "retry.maxAttempts"),
        ({"retry": {"maxAttempts": "3"}}, "retry.maxAttempts"),
        ({"retry": {"maxAttempts": 3, "backoff": "5x"}}, "retry.backoff"),
        ({"retry": {"maxAttempts": 3, "backoff": "25h"}}, "retry.backoff"),
        ({"retry": {"maxAttempts": 3, "backoff": "-1s"}}, "retry.backoff"),
        ({"retry": {"maxAttempts": 3, "backoff": "1m", "maxBackoff": "30s"}}, "retry.maxBackoff"),
        ({"retry": {"maxAttempts": 3, "multiplier": 0.5}}, "retry.multiplier"),
        ({"retry": {"maxAttempts": 3, "multiplier": 11}}, "retry.multiplier"),
        ({"retry": {"maxAttempts": 3, "jitter": 1.5}}, "retry.jitter"),
        ({"retry": {"maxAttempts": 3, "delay": "1s"}}, "retry.delay"),
        ({"retry": 3}, "retry"),
        ({"overlap": "queue"}, "overlap"),
        ({"overlap": None}, "overlap"),
        ({"catchUp": {"window": "soon"}}, "catchUp.window"),
        ({"catchUp": {"window": "-5m"}}, "catchUp.window"),
        ({"catchUp": {"policy": "all"}}, "catchUp.policy"),
        ({"catchUp": {"window": "1m", "burst": True}}, "catchUp.burst"),
        ({"pauseAfterFailures": 0}, "pauseAfterFailures"),
        ({"pauseAfterFailures": "2"}, "pauseAfterFailures"),
        ({"pauseAfterFailures": True}, "pauseAfterFailures"),
    ],
)
async def test_bad_policies_are_400_naming_the_field_and_create_nothing(
    client: httpx.AsyncClient, auth: dict[str, str], overrides: dict[str, Any], field: str
) -> None:
    response = await client.post("/api/jobs", headers=auth, json=new_job(**overrides))
    assert response.status_code == 400, response.text
    body = error(response)
    assert body["error"] == "validation_error" and field in body["message"], body
    assert field in {d["field"] for d in body["details"]}
    assert (await client.get("/api/jobs/nightly-report", headers=auth)).status_code == 404


async def test_graphql_refuses_a_bad_policy_with_the_same_message(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    bad = new_job(retry={"maxAttempts": 3, "jitter": 2.0})
    rest = error(await client.post("/api/jobs", headers=auth, json=bad))
    answer = user_error(await gql(client, auth, CREATE, input=bad), "createJob")
    assert (answer["__typename"], answer["code"], answer["message"]) == (
        "ValidationFailed",
        rest["error"],
        rest["message"],
    )


async def test_cancel_answers_the_spec_shape_and_409_when_nothing_runs(
    client: httpx.AsyncClient, auth: dict[str, str], runtime: Runtime
) -> None:
    await make_job(id="endless", type="test_block")
    idle = await client.post("/api/jobs/endless/cancel", headers=auth)
    assert (idle.status_code, error(idle)["error"]) == (409, "not_running")
    assert (await client.post("/api/jobs/endless/trigger", headers=auth)).status_code == 200

    async def started() -> bool:
        return await Run.filter(job_id="endless").exists()

    await wait_until(started)
    response = await client.post("/api/jobs/endless/cancel", headers=auth)
    assert (response.status_code, response.json()) == (200, {"success": True, "message": "Run cancelled"})

    async def recorded() -> bool:
        return await Run.filter(job_id="endless", completed_at__isnull=False).exists()

    await wait_until(recorded, timeout=5)
    [run] = (await client.get("/api/jobs/endless/logs", headers=auth)).json()["logs"]
    assert (run["result"], run["details"], run["attempt"]) == ("error", "cancelled by user:5", 1)

    # The run is closed in the database, then its lease released: a read between the two still sees it run.
    async def released() -> bool:
        return not (await client.get("/api/jobs/endless", headers=auth)).json()["running"]

    await wait_until(released, timeout=5)
    job = (await client.get("/api/jobs/endless", headers=auth)).json()
    assert (job["running"], job["cancelling"], job["lastResult"]) == (False, False, "error")
    activity = (await client.get("/api/activity?event=jobs.cancel", headers=auth)).json()["logs"]
    assert [(a["jobId"], a["actor"]) for a in activity] == [("endless", "user:5")]


async def test_cancel_is_404_400_and_403_like_trigger(
    client: httpx.AsyncClient, auth: dict[str, str], settings: Any
) -> None:
    missing = await client.post("/api/jobs/nope/cancel", headers=auth)
    assert (missing.status_code, error(missing)["error"]) == (404, "job_not_found")
    assert (await client.post("/api/jobs/Bad_Id/cancel", headers=auth)).status_code == 400
    reader = {"Authorization": f"Bearer {make_token(settings, permissions=['jobs.read'])}"}
    for action in ("trigger", "cancel"):
        assert (await client.post(f"/api/jobs/metadata-sync/{action}", headers=reader)).status_code == 403
    assert (await client.post("/api/jobs/metadata-sync/cancel")).status_code == 401


async def test_graphql_cancel_job_run(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    await make_job(id="endless", type="test_block")
    cancel = f'mutation {{ cancelJobRun(id: "endless") {on_result("success message job { id running cancelling }")} }}'
    idle = user_error(await gql(client, auth, cancel), "cancelJobRun")
    assert (idle["__typename"], idle["code"], idle["message"]) == (
        "NotRunning",
        "not_running",
        "No run of this job is in progress",
    )
    await client.post("/api/jobs/endless/trigger", headers=auth)

    async def started() -> bool:
        return await Run.filter(job_id="endless").exists()

    await wait_until(started)
    body = await gql(client, auth, cancel)
    assert not body.get("errors"), body
    answer = body["data"]["cancelJobRun"]
    assert (answer["success"], answer["message"], answer["job"]["id"]) == (True, "Run cancelled", "endless")

    async def recorded() -> bool:
        return await Run.filter(job_id="endless", completed_at__isnull=False).exists()

    await wait_until(recorded, timeout=5)
    [run] = await Run.filter(job_id="endless")
    assert run.details == "cancelled by user:5"


async def _skips(job_id: str, count: int) -> list[SkippedFire]:
    base = datetime(2026, 1, 1, tzinfo=UTC)
    reasons = ["overlap", "outside_catch_up_window", "disabled", "cancelled_by_policy"]
    made = []
    for i in range(count):
        at = base + timedelta(minutes=i)
        made.append(
            await SkippedFire.create(
                job_id=job_id,
                fire_at=at,
                last_fire_at=at + timedelta(seconds=30 * (i % 2)),
                count=1 + i % 2,
                reason=reasons[i % 4],
                recorded_at=at + timedelta(seconds=1),
            )
        )
    return made


async def test_skipped_fires_page_newest_first_over_rest_and_graphql(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    await make_job(id="ticker")
    await make_job(id="other")
    made = await _skips("ticker", 5)
    await _skips("other", 2)
    page = await client.get("/api/jobs/ticker/fires/skipped?limit=2&offset=1", headers=auth)
    assert page.status_code == 200, page.text
    body = page.json()
    assert (body["total"], body["limit"], body["offset"]) == (5, 2, 1)
    assert [f["id"] for f in body["fires"]] == [made[3].id, made[2].id]
    assert body["fires"][0] == {
        "id": made[3].id,
        "jobId": "ticker",
        "fireAt": "2026-01-01T00:03:00.000Z",
        "lastFireAt": "2026-01-01T00:03:30.000Z",
        "count": 2,
        "reason": "cancelled_by_policy",
        "recordedAt": "2026-01-01T00:03:01.000Z",
    }
    default = (await client.get("/api/jobs/ticker/fires/skipped", headers=auth)).json()
    assert (default["limit"], len(default["fires"])) == (50, 5)
    fields = "id jobId fireAt lastFireAt count reason recordedAt"
    query = (
        f'{{ job(id: "ticker") {{ skippedFires(limit: 2, offset: 1) '
        f"{{ ... on SkippedFirePage {{ total limit offset fires {{ {fields} }} nextBefore }} }} }} }}"
    )
    graphql = await gql(client, auth, query)
    assert graphql["data"]["job"]["skippedFires"] == body
    # Past the deepest offset, the keyset: each page's nextBefore starts the next one.
    assert body["nextBefore"] == made[2].id
    after = (
        await client.get(f"/api/jobs/ticker/fires/skipped?limit=2&before={body['nextBefore']}", headers=auth)
    ).json()
    assert ([f["id"] for f in after["fires"]], after["nextBefore"]) == ([made[1].id, made[0].id], None)


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/api/jobs/nope/fires/skipped", 404, "job_not_found"),
        ("/api/jobs/ticker/fires/skipped?limit=101", 400, "invalid_limit"),
        ("/api/jobs/ticker/fires/skipped?offset=-1", 400, "invalid_offset"),
        ("/api/jobs/Bad_Id/fires/skipped", 400, "invalid_job_id"),
    ],
)
async def test_skipped_fires_bad_requests(
    client: httpx.AsyncClient, auth: dict[str, str], path: str, status: int, code: str
) -> None:
    await make_job(id="ticker")
    response = await client.get(path, headers=auth)
    assert (response.status_code, error(response)["error"]) == (status, code)
