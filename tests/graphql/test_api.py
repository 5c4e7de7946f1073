"""GraphQL over HTTP: parity with REST, error codes, auth, limits and batching."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from app.platform.config import Settings
from tests.conftest import make_token, running_app
from tests.factories import make_job, wait_for_logs, wait_until

# Every field of the REST job object and log entry, in REST's order (the object fields with all of theirs).
JOB_KEYS = (
    "id name description enabled running schedule lastRun nextRun lastResult lastDuration type payload timezone "
    "timeout builtin retry overlap catchUp pauseAfterFailures consecutiveFailures cancelling lastSkippedFire version"
).split()
JOB_FIELDS = (
    " ".join(JOB_KEYS)
    .replace("retry", "retry { maxAttempts backoff maxBackoff multiplier jitter }")
    .replace("catchUp", "catchUp { window policy }")
    .replace("lastSkippedFire", "lastSkippedFire { fireAt reason }")
)
LOG_FIELDS = "id jobId startedAt completedAt duration result triggeredBy details attempt fireAt payload"


async def gql(client: httpx.AsyncClient, auth: dict[str, str], query: str, **variables: Any) -> dict[str, Any]:
    response = await client.post("/graphql", json={"query": query, "variables": variables}, headers=auth)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def codes(body: dict[str, Any]) -> list[str]:
    return [e["extensions"]["code"] for e in body.get("errors", [])]


# A mutation's answer: its success type's fields, or any UserError's (app.api.graphql_outcomes).
USER_ERROR = "__typename ... on UserError { code message }"
# The UserError type a mutation answers where REST answers this status.
OUTCOMES = {
    400: {"ValidationFailed"},
    403: {"PermissionDenied"},
    404: {"JobNotFound"},
    412: {"VersionConflict"},
    409: {"AlreadyRunning", "NotRunning", "JobConflict", "IdempotencyConflict"},
    422: {"IdempotencyConflict"},
}


def on_job(fields: str) -> str:
    return f"{{ {USER_ERROR} ... on Job {{ {fields} }} }}"


def on_result(fields: str) -> str:
    return f"{{ {USER_ERROR} ... on JobActionResult {{ {fields} }} }}"


def user_error(body: dict[str, Any], key: str) -> dict[str, Any]:
    """The UserError a mutation answered (failing if it answered anything else, or a top-level error)."""
    assert not body.get("errors"), body
    answer: dict[str, Any] = body["data"][key]
    assert "code" in answer, answer
    return answer


def rest_job(job: dict[str, Any]) -> dict[str, Any]:
    return {k: job[k] for k in JOB_KEYS}


# (REST method, REST path, GraphQL document, key of the answer, fields to compare or None for all)
PARITY = [
    ("GET", "/api/jobs", f"{{ jobs {{ {JOB_FIELDS} }} }}", "jobs"),
    ("GET", "/api/jobs/ran", f'{{ job(id: "ran") {{ {JOB_FIELDS} }} }}', "job"),
    (
        "GET",
        "/api/jobs/ran/logs?limit=5",
        f'{{ jobLogs(jobId: "ran", limit: 5) {{ {USER_ERROR} ... on JobLogPage '
        f"{{ total limit offset nextBefore logs {{ {LOG_FIELDS} }} }} }} }}",
        "jobLogs",
    ),
    (
        "GET",
        "/api/jobs/logs/all",
        f"{{ allJobLogs {{ {USER_ERROR} ... on JobLogPage "
        f"{{ total limit offset nextBefore logs {{ {LOG_FIELDS} }} }} }} }}",
        "allJobLogs",
    ),
    (
        "GET",
        "/api/activity?event=jobs.trigger",
        f'{{ activity(event: "jobs.trigger") {{ {USER_ERROR} ... on ActivityPage {{ total limit offset nextBefore '
        "logs { id event jobId actor details createdAt requestId clientAddress } } } }",
        "activity",
    ),
    (
        "PATCH",
        "/api/jobs/ran",
        f'mutation {{ updateJob(id: "ran", enabled: false) {on_job(JOB_FIELDS)} }}',
        "updateJob",
    ),
    ("POST", "/api/jobs/ran/stop", f'mutation {{ stopJob(id: "ran") {on_result("success message")} }}', "stopJob"),
    ("POST", "/api/jobs/ran/start", f'mutation {{ startJob(id: "ran") {on_result("success message")} }}', "startJob"),
    (
        "POST",
        "/api/jobs/ran/trigger",
        f'mutation {{ triggerJob(id: "ran") {on_result("success message")} }}',
        "triggerJob",
    ),
    ("GET", "/api/jobs/nope", f'{{ jobLogs(jobId: "nope") {{ {USER_ERROR} }} }}', "jobLogs"),
    (
        "POST",
        "/api/jobs/Bad_Id/trigger",
        f'mutation {{ triggerJob(id: "Bad_Id") {on_result("success")} }}',
        "triggerJob",
    ),
    ("GET", "/api/jobs/ran/logs?limit=101", f'{{ jobLogs(jobId: "ran", limit: 101) {{ {USER_ERROR} }} }}', "jobLogs"),
    (
        "GET",
        "/api/jobs/ran/logs?result=success&triggeredBy=user:5&since=2020-01-01T00:00:00Z",
        f'{{ jobLogs(jobId: "ran", result: "success", triggeredBy: "user:5", since: "2020-01-01T00:00:00Z") '
        f"{{ {USER_ERROR} ... on JobLogPage {{ total limit offset nextBefore logs {{ {LOG_FIELDS} }} }} }} }}",
        "jobLogs",
    ),
    ("GET", "/api/jobs/logs/all?before=0", f"{{ allJobLogs(before: 0) {{ {USER_ERROR} }} }}", "allJobLogs"),
    (
        "GET",
        "/api/activity?actor=user:5&event=jobs.trigger&jobId=ran",
        f'{{ activity(actor: "user:5", event: "jobs.trigger", jobId: "ran") {{ {USER_ERROR} ... on ActivityPage '
        "{ total limit offset nextBefore logs { id event jobId actor details createdAt requestId clientAddress } } } }",
        "activity",
    ),
    ("GET", "/api/activity?until=soon", f'{{ activity(until: "soon") {{ {USER_ERROR} }} }}', "activity"),
    (
        "POST /api/schedules/preview",
        {"schedule": "0 3 * * *", "timezone": "Europe/Paris", "count": 3},
        f'{{ schedulePreview(schedule: "0 3 * * *", timezone: "Europe/Paris", count: 3) '
        f"{{ {USER_ERROR} ... on SchedulePreview {{ schedule timezone fires }} }} }}",
        "schedulePreview",
    ),
    (
        "POST /api/schedules/preview",
        {"interval": "5 minutes"},
        f'{{ schedulePreview(interval: "5 minutes") {{ {USER_ERROR} }} }}',
        "schedulePreview",
    ),
    (
        "POST /api/jobs/ran/trigger",
        {"payload": {"seconds": -1}},
        f'mutation {{ triggerJob(id: "ran", payload: {{seconds: -1}}) {on_result("success")} }}',
        "triggerJob",
    ),
]


def _parity_id(row: tuple[Any, ...]) -> str:
    return f"{row[0]} {row[1]}" if isinstance(row[1], str) else f"{row[0]} {json.dumps(row[1])}"


@pytest.mark.parametrize(("method", "path", "document", "key"), PARITY, ids=[_parity_id(p) for p in PARITY])
async def test_graphql_twin_gives_the_same_data_as_rest(
    client: httpx.AsyncClient, auth: dict[str, str], method: str, path: Any, document: str, key: str
) -> None:
    """Each REST call and its GraphQL twin, the same data or the same outcome (a row whose first item is
    "METHOD /path" carries the REST body second)."""
    await make_job(id="ran", payload={"summary": "Synced 3 games"})
    await client.post("/api/jobs/ran/trigger", headers=auth)
    await wait_for_logs(client, "ran", auth)
    await _restore(client, auth)
    body_sent: Any = {"enabled": False} if method == "PATCH" else None
    if not isinstance(path, str):
        body_sent, (method, path) = path, method.split(" ", 1)
    rest = await client.request(method, path, headers=auth, json=body_sent)
    await _restore(client, auth)
    body = await gql(client, auth, document)
    if rest.status_code >= 400:
        # The twin answers the outcome as data: the UserError type for REST's status, with REST's code and message.
        answer = user_error(body, key)
        assert answer["__typename"] in OUTCOMES[rest.status_code]
        assert (answer["code"], answer["message"]) == (rest.json()["error"], rest.json()["message"])
        return
    assert not body.get("errors"), body
    ours, theirs = rest.json(), body["data"][key]
    if isinstance(theirs, dict):
        theirs.pop("__typename", None)
    if isinstance(ours, list):
        assert [{k: j[k] for k in JOB_KEYS} for j in ours] == theirs
    else:
        if "version" in theirs and method == "PATCH":
            # Between the two, the restore enabled the job again and the twin disabled it: two more versions.
            assert theirs.pop("version") == ours["version"] + 2
        assert {k: ours[k] for k in theirs} == theirs


async def _restore(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    """Undo what the REST call changed, so that its GraphQL twin meets the same state."""
    await client.patch("/api/jobs/ran", headers=auth, json={"enabled": True})
    await wait_until(lambda: _idle(client, auth))


async def _idle(client: httpx.AsyncClient, auth: dict[str, str]) -> bool:
    return not (await client.get("/api/jobs/ran", headers=auth)).json()["running"]


async def test_unknown_job_is_null_not_an_error(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    assert await gql(client, auth, '{ job(id: "no-such-job") { id } }') == {"data": {"job": None}}


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "UNAUTHENTICATED"),
        ({"Authorization": "Basic abc"}, "UNAUTHENTICATED"),
        ({"Authorization": "Bearer not.a.jwt"}, "UNAUTHENTICATED"),
        ("no-permission", "FORBIDDEN"),
    ],
)
async def test_auth_is_the_same_rule_as_rest(
    client: httpx.AsyncClient, settings: Settings, headers: Any, code: str
) -> None:
    if headers == "no-permission":
        headers = {"Authorization": f"Bearer {make_token(settings, permissions=['billing.read'])}"}
    body = await gql(client, headers, "{ jobs { id } }")
    assert body["data"] is None and codes(body) == [code]
    trigger = await gql(client, headers, f'mutation {{ triggerJob(id: "metadata-sync") {on_result("success")} }}')
    if code == "FORBIDDEN":  # a refusal is one of a mutation's outcomes
        answer = user_error(trigger, "triggerJob")
        assert (answer["__typename"], answer["code"]) == ("PermissionDenied", "forbidden")
    else:  # no caller at all is no outcome: a top-level error
        assert trigger["data"] is None and codes(trigger) == [code]
    assert (await client.get("/api/jobs/metadata-sync/logs", headers=_admin(settings))).json()["total"] == 0


def _admin(settings: Settings) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token(settings)}"}


async def test_trigger_while_running_is_conflict(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    await make_job(id="slow", payload={"seconds": 1})
    first = await gql(client, auth, f'mutation {{ triggerJob(id: "slow") {on_result("success job { running }")} }}')
    assert first["data"]["triggerJob"] == {"__typename": "JobActionResult", "success": True, "job": {"running": True}}
    again = await gql(
        client, auth, 'mutation { triggerJob(id: "slow") { ... on AlreadyRunning { code message jobId } } }'
    )
    assert again["data"]["triggerJob"] == {
        "code": "already_running",
        "message": "Job is already running",
        "jobId": "slow",
    }


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("{ jobs { idd } }", "Cannot query field 'idd'"),
        ("{ jobs { id }", "Syntax Error"),
        ("{ " + " ".join(f"a{i}: jobs {{ id }}" for i in range(16)) + " }", "16 aliases found. Allowed: 15"),
        ("{ jobs { " + "id " * 2100 + "} }", "Document contains more than 2000 tokens"),
        ("{ jobs { logs { logs { id } } } " + "# " + "x" * 20_000 + "\n}", "Query is larger than 20000 bytes"),
    ],
    ids=["unknown-field", "syntax", "aliases", "tokens", "size"],
)
async def test_bad_and_abusive_documents_are_refused(
    client: httpx.AsyncClient, auth: dict[str, str], document: str, message: str
) -> None:
    body = await gql(client, auth, document)
    assert codes(body) == ["BAD_USER_INPUT"]
    assert message in body["errors"][0]["message"]


async def test_fragment_cycles_and_depth_are_limited(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    deep = "{ jobs { logs { ... on JobLogPage { logs { id } } } } }"
    assert not (await gql(client, auth, deep)).get("errors")
    aliased_fragments = (
        "query { ...F } fragment F on Query { " + " ".join(f"x{i}: jobs {{ id }}" for i in range(16)) + " }"
    )
    body = await gql(client, auth, aliased_fragments)
    assert codes(body) == ["BAD_USER_INPUT"] and "aliases" in body["errors"][0]["message"]


async def test_introspection_can_be_switched_off(settings_factory: Any, auth: dict[str, str]) -> None:
    query = "{ __schema { queryType { name } } }"
    async with running_app(settings_factory()) as (_, client):
        assert (await gql(client, auth, query))["data"] == {"__schema": {"queryType": {"name": "Query"}}}
    async with running_app(settings_factory(graphql_introspection=False)) as (_, client):
        body = await gql(client, auth, query)
        assert body["data"] is None and set(codes(body)) == {"BAD_USER_INPUT"}
        assert "introspection" in body["errors"][0]["message"]


async def test_graphiql_is_served_to_a_browser(client: httpx.AsyncClient) -> None:
    response = await client.get("/graphql", headers={"Accept": "text/html"})
    assert response.status_code == 200 and "graphiql" in response.text.lower()


class _SqlCounter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.statements = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().lstrip().upper().startswith("SELECT"):
            self.statements += 1


@pytest.mark.postgres
async def test_job_logs_of_many_jobs_cost_a_constant_number_of_queries(
    settings_factory: Callable[..., Settings], auth: dict[str, str]
) -> None:
    # Every statement of the process is counted: no reaper, reconcile or worker may query meanwhile.
    quiet = settings_factory(
        embedded_worker=False, heartbeat_seconds=3600, lease_ttl_seconds=7200, reconcile_interval_seconds=3600
    )
    async with running_app(quiet) as (_, client):
        counts = await _statements_per_list(client, auth)
    print(f"SELECTs for a list with logs: {counts}")
    assert 0 < counts[5] == counts[100]


async def _statements_per_list(client: httpx.AsyncClient, auth: dict[str, str]) -> dict[int, int]:
    from app.data.runs import Run
    from app.platform.timefmt import utcnow

    counts = {}
    for n in (5, 100):
        for i in range(n):
            job = await make_job(id=f"batch-{n}-{i}")
            for k in range(3):
                await Run.create(job_id=job.id, token=f"{job.id}-{k}", triggered_by="scheduler", started_at=utcnow())
        counter = _SqlCounter()
        db_log = logging.getLogger("tortoise.db_client")
        db_log.addHandler(counter)
        level = db_log.level
        db_log.setLevel(logging.DEBUG)
        try:
            body = await gql(
                client, auth, "{ jobs { id logs(limit: 2) { ... on JobLogPage { total logs { id jobId } } } } }"
            )
        finally:
            db_log.removeHandler(counter)
            db_log.setLevel(level)
        jobs = [j for j in body["data"]["jobs"] if j["id"].startswith(f"batch-{n}-")]
        assert len(jobs) == n
        assert all(j["logs"]["total"] == 3 and len(j["logs"]["logs"]) == 2 for j in jobs)
        assert all(entry["jobId"] == j["id"] for j in jobs for entry in j["logs"]["logs"])
        counts[n] = counter.statements
    return counts


async def test_job_logs_pages_by_keyset_too(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    from app.data.runs import Run
    from app.platform.timefmt import utcnow

    await make_job(id="keyed")
    made = [
        await Run.create(job_id="keyed", token=f"k{i}", triggered_by="scheduler", started_at=utcnow()) for i in range(5)
    ]
    page = '{ job(id: "keyed") { logs(limit: 2%s) { ... on JobLogPage { nextBefore logs { id } } } } }'
    first = (await gql(client, auth, page % ""))["data"]["job"]["logs"]
    assert ([e["id"] for e in first["logs"]], first["nextBefore"]) == ([made[4].id, made[3].id], made[3].id)
    second = (await gql(client, auth, page % f", before: {first['nextBefore']}"))["data"]["job"]["logs"]
    assert ([e["id"] for e in second["logs"]], second["nextBefore"]) == ([made[2].id, made[1].id], made[1].id)
    last = (await gql(client, auth, page % f", before: {second['nextBefore']}"))["data"]["job"]["logs"]
    assert ([e["id"] for e in last["logs"]], last["nextBefore"]) == ([made[0].id], None)


async def test_a_document_over_the_cost_limit_is_refused_before_it_runs(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    """Lists inside lists multiply: 100 jobs with 100 runs each with their fields is over GRAPHQL_MAX_COST (20,000);
    the same with 5 runs each, and what the dashboard asks, are not."""
    nested = "{ jobs { id logs(limit: %d) { ... on JobLogPage { logs { id result details payload } } } } }"
    refused = await gql(client, auth, nested % 100)
    assert codes(refused) == ["BAD_USER_INPUT"] and refused.get("data") is None
    assert "more than GRAPHQL_MAX_COST (20000)" in refused["errors"][0]["message"]
    # Without a token nothing runs whatever it costs: the answer is the refusal of the caller.
    assert codes(await gql(client, {}, nested % 100)) == ["UNAUTHENTICATED"]
    assert "errors" not in await gql(client, auth, nested % 5)
    by_variable = "query($n: Int) { jobs { id logs(limit: $n) { ... on JobLogPage { logs { id result } } } } }"
    assert codes(await gql(client, auth, by_variable, n=100)) == ["BAD_USER_INPUT"]
    assert codes(await gql(client, auth, by_variable, n=100.0)) == ["BAD_USER_INPUT"]  # an integral float is an Int
    by_default = "query($n: Int = 100) { jobs { id logs(limit: $n) { ... on JobLogPage { logs { id result } } } } }"
    assert codes(await gql(client, auth, by_default)) == ["BAD_USER_INPUT"]  # left out: its default counts
    assert "errors" not in await gql(client, auth, by_variable, n=10)
    # Fragments count as what they select.
    spread = "{ jobs { ...J } } fragment J on Job { logs(limit: 100) { ... on JobLogPage { logs { id result } } } }"
    assert codes(await gql(client, auth, spread)) == ["BAD_USER_INPUT"]
