"""Jobs created and deleted through the API from registered job types."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from arq.constants import default_queue_name

from app.job_types import registry
from tests.conftest import running_app
from tests.factories import wait_for_logs


def new_job(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "nightly-report",
        "name": "Nightly Report",
        "description": "Sleeps a little",
        "type": "test_sleep",
        "interval": "24h",
        "payload": {"seconds": 0},
    }
    body.update(overrides)
    return body


def error(response: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = response.json()
    assert body["success"] is False and body["message"], body
    return body


@pytest.mark.postgres
async def test_create_returns_201_and_the_job_with_defaults_applied(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    response = await client.post("/api/jobs", headers=auth, json=new_job())
    assert response.status_code == 201, response.text
    job = response.json()
    assert (job["id"], job["schedule"], job["type"], job["enabled"], job["running"]) == (
        "nightly-report",
        "@every 24h",
        "test_sleep",
        True,
        False,
    )
    assert job["payload"] == {"seconds": 0.0, "summary": "slept"}
    assert job["nextRun"] is not None and job["builtin"] is False
    listed = {j["id"]: j for j in (await client.get("/api/jobs", headers=auth)).json()}
    assert listed["nightly-report"]["nextRun"] == job["nextRun"]
    activity = (await client.get("/api/activity?event=jobs.create", headers=auth)).json()["logs"]
    assert [(a["jobId"], a["actor"]) for a in activity] == [("nightly-report", "user:5")]


async def test_a_created_job_fires_on_its_interval(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    created = await client.post("/api/jobs", headers=auth, json=new_job(id="every-second", interval="1s"))
    assert created.status_code == 201
    logs = await wait_for_logs(client, "every-second", auth, count=2, timeout=10)
    assert {e["triggeredBy"] for e in logs} == {"scheduler"} and {e["result"] for e in logs} == {"success"}


async def test_schedule_and_timezone_are_accepted(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    body = new_job(id="berlin", interval=None, schedule="30 2 * * *", timezone="Europe/Berlin", timeout=12.5)
    response = await client.post("/api/jobs", headers=auth, json=body)
    assert response.status_code == 201, response.text
    job = response.json()
    assert (job["schedule"], job["timezone"], job["timeout"]) == ("30 2 * * *", "Europe/Berlin", 12.5)


@pytest.mark.parametrize(
    ("overrides", "status", "code", "text"),
    [
        ({"type": "no_such_type"}, 400, "unknown_job_type", "known types: "),
        ({"payload": {"seconds": -1}}, 400, "validation_error", "payload.seconds"),
        ({"payload": {"sleep": 1}}, 400, "validation_error", "payload.sleep"),
        ({"payload": [1]}, 400, "validation_error", "payload"),
        ({"interval": "5x"}, 400, "invalid_interval", "90s, 5m, 1h30m, 24h"),
        ({"interval": "500ms"}, 400, "invalid_interval", "minimum interval of 1s"),
        ({"interval": "-5m"}, 400, "invalid_interval", "90s"),
        ({"interval": None, "schedule": "61 * * * *"}, 400, "invalid_schedule", "@every"),
        ({"interval": None, "schedule": "@reboot"}, 400, "invalid_schedule", "@every"),
        ({"interval": None}, 400, "validation_error", "exactly one of interval"),
        ({"schedule": "@daily"}, 400, "validation_error", "exactly one of interval"),
        ({"id": "Bad_Id"}, 400, "invalid_job_id", "Invalid job ID format"),
        ({"name": ""}, 400, "validation_error", "name"),
        ({"timeout": 0}, 400, "validation_error", "timeout"),
        ({"enabled": "yes"}, 400, "validation_error", "enabled"),
        ({"owner": "me"}, 400, "validation_error", "owner"),
        ({"timezone": "Mars/Olympus"}, 400, "invalid_timezone", "Mars/Olympus"),
    ],
)
async def test_bad_creations_are_400_and_create_nothing(
    client: httpx.AsyncClient, auth: dict[str, str], overrides: dict[str, Any], status: int, code: str, text: str
) -> None:
    response = await client.post("/api/jobs", headers=auth, json=new_job(**overrides))
    assert response.status_code == status, response.text
    body = error(response)
    assert body["error"] == code and text in body["message"], body
    ids = {j["id"] for j in (await client.get("/api/jobs", headers=auth)).json()}
    assert "nightly-report" not in ids and "Bad_Id" not in ids


async def test_payload_errors_come_with_per_field_details(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    response = await client.post("/api/jobs", headers=auth, json=new_job(payload={"seconds": "soon", "x": 1}))
    details = error(response)["details"]
    assert {d["field"] for d in details} == {"payload.seconds", "payload.x"}


async def test_unknown_type_message_lists_the_known_ones(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    message = error(await client.post("/api/jobs", headers=auth, json=new_job(type="nope")))["message"]
    for name in ("metadata_sync", "test_sleep", "cleanup_job_logs"):
        assert name in message


async def test_duplicate_id_is_409(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    assert (await client.post("/api/jobs", headers=auth, json=new_job())).status_code == 201
    again = await client.post("/api/jobs", headers=auth, json=new_job(name="Other"))
    assert (again.status_code, error(again)["error"]) == (409, "job_exists")
    builtin = await client.post("/api/jobs", headers=auth, json=new_job(id="metadata-sync"))
    assert builtin.status_code == 409


@pytest.mark.parametrize("raw", [b"{not json", b"[]", b'"job"'])
async def test_malformed_bodies_are_400(client: httpx.AsyncClient, auth: dict[str, str], raw: bytes) -> None:
    response = await client.post("/api/jobs", headers={**auth, "Content-Type": "application/json"}, content=raw)
    assert response.status_code == 400 and error(response)["error"] in {"invalid_json", "validation_error"}


async def test_body_over_the_limit_is_413(settings_factory: Any, auth: dict[str, str]) -> None:
    async with running_app(settings_factory(max_body_bytes=2048)) as (_, client):
        big = new_job(description="x" * 3000)
        response = await client.post("/api/jobs", headers=auth, json=big)
        assert response.status_code == 413
        assert error(response)["error"] == "payload_too_large"
        assert (await client.post("/api/jobs", headers=auth, json=new_job())).status_code == 201


@pytest.mark.postgres
async def test_delete_removes_job_and_pending_fire_but_keeps_runs(
    client: httpx.AsyncClient, auth: dict[str, str], runtime: Any
) -> None:
    await client.post("/api/jobs", headers=auth, json=new_job(id="doomed", interval="1h"))
    await client.post("/api/jobs/doomed/trigger", headers=auth)
    [entry] = await wait_for_logs(client, "doomed", auth)

    async def fires() -> list[str]:
        ids = await runtime.redis.zrange(default_queue_name, 0, -1)
        return [i.decode() for i in ids if i.decode().startswith("fire:doomed:")]

    assert len(await fires()) == 1
    response = await client.delete("/api/jobs/doomed", headers=auth)
    assert (response.status_code, response.content) == (204, b"")
    assert await fires() == []
    assert (await client.get("/api/jobs/doomed", headers=auth)).status_code == 404
    kept = (await client.get("/api/jobs/logs/all", headers=auth)).json()["logs"]
    assert [e["id"] for e in kept if e["jobId"] == "doomed"] == [entry["id"]]
    events = [a["event"] for a in (await client.get("/api/activity?jobId=doomed", headers=auth)).json()["logs"]]
    assert events == ["jobs.delete", "jobs.trigger", "jobs.create"]
    assert (await client.delete("/api/jobs/doomed", headers=auth)).status_code == 404


async def test_builtin_and_running_jobs_cannot_be_deleted(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    builtin = await client.delete("/api/jobs/metadata-sync", headers=auth)
    assert (builtin.status_code, error(builtin)["error"]) == (409, "builtin_job")
    assert "built in" in error(builtin)["message"]
    await client.post("/api/jobs", headers=auth, json=new_job(id="busy", payload={"seconds": 1}))
    await client.post("/api/jobs/busy/trigger", headers=auth)
    running = await client.delete("/api/jobs/busy", headers=auth)
    assert (running.status_code, error(running)["error"]) == (409, "already_running")
    await wait_for_logs(client, "busy", auth)
    assert (await client.delete("/api/jobs/busy", headers=auth)).status_code == 204


async def test_job_types_are_listed_with_their_payload_schema(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    response = await client.get("/api/job-types", headers=auth)
    assert response.status_code == 200
    types = {t["name"]: t for t in response.json()}
    assert {"metadata_sync", "cleanup_expired_tokens", "test_sleep"} <= set(types)
    sleep = types["test_sleep"]
    assert sleep["description"] and sleep["payloadSchema"]["properties"]["seconds"]["minimum"] == 0
    assert sleep["payloadSchema"]["additionalProperties"] is False
    assert (await client.get("/api/job-types")).status_code == 401


async def test_a_plugin_module_named_in_settings_brings_its_type(settings_factory: Any, auth: dict[str, str]) -> None:
    assert "plugin_echo" not in {t.name for t in registry.all_types()}
    settings = settings_factory(job_type_modules=["tests.support.job_types", "tests.support.plugin_types"])
    async with running_app(settings) as (_, client):
        names = {t["name"] for t in (await client.get("/api/job-types", headers=auth)).json()}
        assert "plugin_echo" in names
        body = new_job(id="echo", type="plugin_echo", payload={"text": "hi", "times": 3})
        assert (await client.post("/api/jobs", headers=auth, json=body)).status_code == 201
        await client.post("/api/jobs/echo/trigger", headers=auth)
        [entry] = await wait_for_logs(client, "echo", auth)
        assert entry["details"] == "hi hi hi"


async def test_graphql_create_delete_and_job_types(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    async def gql(query: str) -> dict[str, Any]:
        result: dict[str, Any] = (await client.post("/graphql", headers=auth, json={"query": query})).json()
        return result

    created = await gql(
        'mutation { createJob(input: {id: "gql-job", name: "G", type: "test_sleep", interval: "5m", '
        "payload: {seconds: 0}}) { ... on Job { id schedule payload nextRun } } }"
    )
    job = created["data"]["createJob"]
    assert (job["id"], job["schedule"], job["payload"]) == (
        "gql-job",
        "@every 5m",
        {"seconds": 0.0, "summary": "slept"},
    )
    outcome = "{ __typename ... on UserError { code message } }"
    again = await gql(
        f'mutation {{ createJob(input: {{id: "gql-job", name: "G", type: "test_sleep", interval: "5m"}}) {outcome} }}'
    )
    assert again["data"]["createJob"]["__typename"] == "JobConflict"
    assert again["data"]["createJob"]["code"] == "job_exists"
    bad = await gql(f'mutation {{ createJob(input: {{id: "x", name: "G", type: "nope", interval: "5m"}}) {outcome} }}')
    assert bad["data"]["createJob"]["__typename"] == "ValidationFailed"
    assert "known types" in bad["data"]["createJob"]["message"]
    types = await gql("{ jobTypes { name description payloadSchema } }")
    assert "test_sleep" in {t["name"] for t in types["data"]["jobTypes"]}
    deleted = await gql('mutation { deleteJob(id: "gql-job") { ... on JobDeleted { id } } }')
    assert deleted["data"] == {"deleteJob": {"id": "gql-job"}}
    builtin = await gql(f'mutation {{ deleteJob(id: "metadata-sync") {outcome} }}')
    assert (builtin["data"]["deleteJob"]["__typename"], builtin["data"]["deleteJob"]["code"]) == (
        "JobConflict",
        "builtin_job",
    )


async def test_http_request_jobs_are_checked_against_the_allow_list_at_creation(
    settings_factory: Any, auth: dict[str, str]
) -> None:
    settings = settings_factory(http_request_allowed_hosts=["https://api.example.com"])
    async with running_app(settings) as (_, client):
        body = new_job(id="ping", type="http_request", payload={"url": "http://169.254.169.254/latest/meta-data"})
        refused = await client.post("/api/jobs", headers=auth, json=body)
        assert (refused.status_code, error(refused)["error"]) == (400, "payload_refused")
        assert "HTTP_REQUEST_ALLOWED_HOSTS" in error(refused)["message"]
        body["payload"] = {"url": "https://api.example.com/health", "expectStatus": [200, 204]}
        created = await client.post("/api/jobs", headers=auth, json=body)
        assert created.status_code == 201, created.text
        assert created.json()["payload"]["expectStatus"] == [200, 204]


async def test_a_seed_type_job_created_through_the_api_does_its_work(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    from datetime import timedelta

    from app.data.app_tables import Listing
    from app.platform.timefmt import utcnow

    now = utcnow()
    await Listing.create(title="old", created_at=now - timedelta(days=40), updated_at=now)
    await Listing.create(title="new", created_at=now - timedelta(days=2), updated_at=now)
    body = new_job(id="cleanup-expired-listings", type="cleanup_expired_listings", payload={"days_old": 30})
    assert (await client.post("/api/jobs", headers=auth, json=body)).status_code == 201
    await client.post("/api/jobs/cleanup-expired-listings/trigger", headers=auth)
    [entry] = await wait_for_logs(client, "cleanup-expired-listings", auth)
    assert (entry["result"], entry["details"]) == ("success", "Deleted 1 listings older than 30 days")
    assert await Listing.all().values_list("title", flat=True) == ["new"]


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"interval": "87600000h"}, "invalid_interval"),
        ({"interval": None, "schedule": "@every 9999999999h"}, "invalid_schedule"),
        ({"interval": "0" * 250 + "1h"}, "validation_error"),
        ({"interval": "1" * 5000 + "h"}, "validation_error"),
        ({"interval": None, "schedule": ",".join(["0"] * 200) + " * * * *"}, "validation_error"),
        ({"timezone": "Europe"}, "invalid_timezone"),
        ({"timezone": "../../etc/passwd"}, "invalid_timezone"),
        ({"timeout": "30"}, "validation_error"),
        ({"timeout": True}, "validation_error"),
        ({"payload": None}, "validation_error"),
        ({"payload": {"seconds": True}}, "validation_error"),
        ({"type": "cleanup_expired_listings", "payload": {"days_old": True}}, "validation_error"),
        ({"type": "cleanup_expired_listings", "payload": {"days_old": 10**30}}, "validation_error"),
        ({"id": "ünï-cødé"}, "invalid_job_id"),
        ({"id": 123}, "validation_error"),
    ],
)
async def test_hostile_creations_are_400_never_500(
    client: httpx.AsyncClient, auth: dict[str, str], overrides: dict[str, Any], code: str
) -> None:
    response = await client.post("/api/jobs", headers=auth, json=new_job(**overrides))
    assert response.status_code == 400, response.text
    assert error(response)["error"] == code
    assert (await client.get("/api/jobs/nightly-report", headers=auth)).status_code == 404


async def test_a_chunked_body_over_the_limit_is_413_too(settings_factory: Any, auth: dict[str, str]) -> None:
    async with running_app(settings_factory(max_body_bytes=2048)) as (_, client):

        async def chunks() -> Any:
            for _ in range(8):
                yield b" " * 512  # no Content-Length: the limit must count what arrives
            yield b"{}"

        response = await client.post(
            "/api/jobs", headers={**auth, "Content-Type": "application/json"}, content=chunks()
        )
        assert response.status_code == 413
        assert error(response)["error"] == "payload_too_large"


async def test_graphql_create_applies_the_rest_rules_to_nulls_and_bad_variables(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    document = "mutation($i: CreateJobInput!) { createJob(input: $i) { ... on ValidationFailed { message } } }"
    base = {"id": "g", "name": "G", "type": "test_sleep", "interval": "5m"}
    for variables, message, by_schema in [
        ({**base, "payload": None}, "payload", False),  # the service's rule: a ValidationFailed answer
        ({**base, "timeout": "30"}, "timeout", True),  # refused by the schema's types: a top-level error
        ({**base, "enabled": "yes"}, "enabled", True),
    ]:
        body = (
            await client.post("/graphql", headers=auth, json={"query": document, "variables": {"i": variables}})
        ).json()
        if by_schema:
            assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT", body
            assert message in body["errors"][0]["message"]
        else:
            assert message in body["data"]["createJob"]["message"], body
    assert (await client.get("/api/jobs/g", headers=auth)).status_code == 404
