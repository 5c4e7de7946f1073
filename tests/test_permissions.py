"""The permission table (app.platform.permissions) walked whole: every operation, over REST and GraphQL (and the
websocket for subscriptions), with a token of each permission. Requests name jobs that do not exist, or carry
bodies that fail validation, so that an allowed call answers 404 or 400 and changes nothing."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from graphql import build_schema
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from app.data.runs import Run
from app.main import schema
from app.platform import permissions
from app.platform.config import Settings
from app.platform.timefmt import utcnow
from tests.conftest import make_token
from tests.support.subscriptions import served

TOKENS = {
    "read": [permissions.READ],
    "trigger": [permissions.TRIGGER],
    "write": [permissions.WRITE],
    "admin": [permissions.ADMIN],
    "read+trigger": [permissions.READ, permissions.TRIGGER],
    "unrelated": ["billing.read"],
}

# operation -> (REST method, path, JSON body) and its GraphQL document (None: no REST twin).
REST: dict[str, tuple[str, str, object]] = {
    "jobs": ("GET", "/api/jobs", None),
    "job": ("GET", "/api/jobs/nope", None),
    "jobLogs": ("GET", "/api/jobs/nope/logs", None),
    "allJobLogs": ("GET", "/api/jobs/logs/all", None),
    "run": ("GET", "/api/runs/1", None),
    "runLog": ("GET", "/api/runs/1/log", None),
    "skippedFires": ("GET", "/api/jobs/nope/fires/skipped", None),
    "nextFires": ("GET", "/api/jobs/nope/fires/next", None),
    "schedulePreview": ("POST", "/api/schedules/preview", {"schedule": "@daily", "count": 1}),
    "activity": ("GET", "/api/activity", None),
    "jobTypes": ("GET", "/api/job-types", None),
    "triggerJob": ("POST", "/api/jobs/nope/trigger", None),
    "cancelJobRun": ("POST", "/api/jobs/nope/cancel", None),
    "createJob": ("POST", "/api/jobs", {"id": "x"}),
    "updateJob": ("PATCH", "/api/jobs/nope", {"enabled": True}),
    "deleteJob": ("DELETE", "/api/jobs/nope", None),
    "startJob": ("POST", "/api/jobs/nope/start", None),
    "stopJob": ("POST", "/api/jobs/nope/stop", None),
}
GRAPHQL: dict[str, str] = {
    "jobs": "{ jobs { id } }",
    "job": '{ job(id: "nope") { id } }',
    "jobLogs": '{ jobLogs(jobId: "metadata-sync") { __typename } }',
    "allJobLogs": "{ allJobLogs { __typename } }",
    "run": '{ run(id: "1") { id } }',
    "schedulePreview": '{ schedulePreview(schedule: "@daily", count: 1) { __typename } }',
    "activity": "{ activity { __typename } }",
    "jobTypes": "{ jobTypes { name } }",
    "triggerJob": 'mutation { triggerJob(id: "nope") { __typename ... on UserError { message } } }',
    "cancelJobRun": 'mutation { cancelJobRun(id: "nope") { __typename ... on UserError { message } } }',
    "createJob": 'mutation { createJob(input: {id: "Bad Id", name: "x", type: "nope"}) '
    "{ __typename ... on UserError { message } } }",
    "updateJob": 'mutation { updateJob(id: "nope", enabled: true) { __typename ... on UserError { message } } }',
    "deleteJob": 'mutation { deleteJob(id: "nope") { __typename ... on UserError { message } } }',
    "startJob": 'mutation { startJob(id: "nope") { __typename ... on UserError { message } } }',
    "stopJob": 'mutation { stopJob(id: "nope") { __typename ... on UserError { message } } }',
}
SUBSCRIPTIONS: dict[str, str] = {
    "jobStatus": 'subscription { jobStatus(id: "metadata-sync") { id } }',
    "jobDeleted": "subscription { jobDeleted }",
    "activityAdded": "subscription { activityAdded { id } }",
    "runLog": 'subscription { runLog(runId: "1") { seq } }',  # run 1 is open and quiet: made by the test
}


def test_every_operation_is_in_the_table_and_walked_here() -> None:
    rest_or_graphql = set(REST) | set(GRAPHQL) | set(SUBSCRIPTIONS)
    assert rest_or_graphql == set(permissions.REQUIRED)
    # Every root field of the schema has its row (a missing one would need settings.update: fail closed).
    graphql_schema = build_schema(schema.as_str())  # the SDL as clients see it, read back by graphql-core
    fields = {
        name
        for root in (graphql_schema.query_type, graphql_schema.mutation_type, graphql_schema.subscription_type)
        if root is not None
        for name in root.fields
    }
    assert fields == set(GRAPHQL) | set(SUBSCRIPTIONS)


def _expected(token: str, operation: str) -> bool:
    return permissions.allows(set(TOKENS[token]), operation)


@pytest.mark.parametrize("token", list(TOKENS))
async def test_rest_and_graphql_enforce_the_one_table(
    client: httpx.AsyncClient, settings: Settings, token: str
) -> None:
    headers = {"Authorization": f"Bearer {make_token(settings, permissions=TOKENS[token])}"}
    for operation, (method, path, body) in REST.items():
        response = await client.request(method, path, headers=headers, json=body)
        allowed = _expected(token, operation)
        if allowed:
            assert response.status_code != 403, (token, operation, response.text)
        else:
            assert response.status_code == 403, (token, operation, response.text)
            needed = permissions.required(operation)
            assert response.json() == {
                "success": False,
                "error": "forbidden",
                "message": f"Permission '{needed}' is required (or 'settings.update', which grants every permission)",
            }
    for operation, document in GRAPHQL.items():
        response = await client.post("/graphql", headers=headers, json={"query": document})
        body = response.json()
        errors = body.get("errors") or []
        # A query's refusal is a top-level FORBIDDEN; a mutation's is its PermissionDenied answer.
        forbidden = [e["message"] for e in errors if e["extensions"]["code"] == "FORBIDDEN"]
        answer = (body.get("data") or {}).get(operation)
        if isinstance(answer, dict) and answer.get("__typename") == "PermissionDenied":
            forbidden.append(answer["message"])
        if _expected(token, operation):
            assert forbidden == [], (token, operation, body)
        else:
            assert len(forbidden) == 1, (token, operation, body)
            assert permissions.required(operation) in forbidden[0]
            assert document.startswith("mutation") == (errors == []), body


async def test_a_job_a_mutation_answers_shows_its_runs_only_to_a_reader(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    """A jobs.write caller gets the job it changed, not its runs, skipped or next fires (those need jobs.read)."""
    nested = (
        "{ __typename ... on JobActionResult { job { id logs { __typename } skippedFires { __typename } "
        "nextFires { __typename ... on PermissionDenied { permission } } } } }"
    )
    for granted, typename in [([permissions.WRITE], "PermissionDenied"), ([permissions.WRITE, permissions.READ], None)]:
        headers = {"Authorization": f"Bearer {make_token(settings, permissions=granted)}"}
        body = (
            await client.post(
                "/graphql", headers=headers, json={"query": f'mutation {{ startJob(id: "metadata-sync") {nested} }}'}
            )
        ).json()
        job = body["data"]["startJob"]["job"]
        shown = {job["logs"]["__typename"], job["skippedFires"]["__typename"], job["nextFires"]["__typename"]}
        if typename is None:
            assert "PermissionDenied" not in shown, body
        else:
            assert shown == {typename} and job["nextFires"]["permission"] == permissions.READ, body


@pytest.mark.slow
async def test_subscriptions_enforce_the_one_table(settings: Settings) -> None:
    async with served(settings) as (_, url):
        await Run.create(id=1, job_id="metadata-sync", token="t", triggered_by="user:1", started_at=utcnow())
        for token, granted in TOKENS.items():
            for operation, document in SUBSCRIPTIONS.items():
                outcome = await _subscribe(url, make_token(settings, permissions=granted), document)
                if not any(p in permissions.GRANTED for p in granted):
                    assert outcome == "closed 4403", (token, operation, outcome)
                elif _expected(token, operation):
                    assert outcome in ("data", "quiet"), (token, operation, outcome)
                else:
                    assert outcome == "FORBIDDEN", (token, operation, outcome)


async def _subscribe(url: str, token: str, document: str) -> str:
    """What a subscriber with this token sees first: `data`, an error code, `quiet` (allowed, nothing yet),
    or the connection closed with its code."""
    async with connect(url, subprotocols=["graphql-transport-ws"]) as ws:  # type: ignore[list-item]
        await ws.send(json.dumps({"type": "connection_init", "payload": {"token": token}}))
        try:
            ack = json.loads(await asyncio.wait_for(ws.recv(), 5))
        except ConnectionClosed:
            return f"closed {ws.close_code}"
        assert ack["type"] == "connection_ack"
        await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": {"query": document}}))
        try:
            message = json.loads(await asyncio.wait_for(ws.recv(), 1.0))
        except TimeoutError:
            return "quiet"
        if message["type"] == "error":
            return str(message["payload"][0].get("extensions", {}).get("code", message["payload"]))
        if message["type"] == "next" and message["payload"].get("errors"):
            error = message["payload"]["errors"][0]
            return str(error.get("extensions", {}).get("code", error))
        return "data"
