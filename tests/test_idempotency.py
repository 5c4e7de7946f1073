"""Idempotency-Key on POST /api/jobs and POST /api/jobs/{jobId}/trigger (GraphQL: idempotencyKey): the same key
and request replay the first answer and do nothing again, a key reused for another request is refused, concurrent
requests with one key run once, across two API processes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from app.data.activity import Activity
from app.data.jobs import Job
from app.data.runs import Run
from app.platform import idempotency
from app.platform.config import Settings
from app.platform.runtime import Runtime
from tests.conftest import make_token
from tests.factories import make_job, wait_until
from tests.graphql.test_api import gql
from tests.support.processes import ApiProcess
from tests.support.servers import free_port

pytestmark = pytest.mark.postgres
JOB = {"id": "once", "name": "Once", "type": "test_sleep", "schedule": "0 6 * * *"}


def keyed(auth: dict[str, str], key: str) -> dict[str, str]:
    return {**auth, "Idempotency-Key": key}


async def test_a_retried_create_replays_the_first_answer(
    client: httpx.AsyncClient, auth: dict[str, str], runtime: Runtime
) -> None:
    first = await client.post("/api/jobs", headers=keyed(auth, "k-1"), json=JOB)
    assert first.status_code == 201 and "idempotent-replayed" not in first.headers
    await client.patch("/api/jobs/once", headers=auth, json={"description": "changed since"})
    again = await client.post("/api/jobs", headers=keyed(auth, "k-1"), json=JOB)
    assert (again.status_code, again.json()) == (201, first.json())  # the first answer, not the job as it is now
    assert again.headers["idempotent-replayed"] == "true"
    assert await Activity.filter(event="jobs.create").count() == 1
    # Kept for a day.
    [name] = [k async for k in runtime.redis.scan_iter(match="jg:idem:*")]
    assert idempotency.TTL_SECONDS - 60 < await runtime.redis.ttl(name) <= idempotency.TTL_SECONDS
    # Without the key, the spec's behaviour: the id exists.
    plain = await client.post("/api/jobs", headers=auth, json=JOB)
    assert (plain.status_code, plain.json()["error"]) == (409, "job_exists")


async def test_a_key_names_one_request_of_one_caller(
    client: httpx.AsyncClient, auth: dict[str, str], settings: Settings
) -> None:
    await client.post("/api/jobs", headers=keyed(auth, "k-2"), json=JOB)
    other = await client.post("/api/jobs", headers=keyed(auth, "k-2"), json={**JOB, "name": "Other"})
    assert (other.status_code, other.json()["error"]) == (422, "idempotency_key_reused")
    elsewhere = await client.post("/api/jobs/once/trigger", headers=keyed(auth, "k-2"))
    assert (elsewhere.status_code, elsewhere.json()["error"]) == (422, "idempotency_key_reused")
    # Another caller's key of the same name is theirs: their request runs (and meets the existing job).
    someone = {"Authorization": f"Bearer {make_token(settings, sub='9')}", "Idempotency-Key": "k-2"}
    theirs = await client.post("/api/jobs", headers=someone, json=JOB)
    assert (theirs.status_code, theirs.json()["error"]) == (409, "job_exists")
    for bad in ["", "has space", "x" * 256, "tab\there"]:
        refused = await client.post("/api/jobs", headers={**auth, "Idempotency-Key": bad}, json=JOB)
        assert (refused.status_code, refused.json()["error"]) == (400, "invalid_idempotency_key"), bad


async def test_an_error_answer_is_replayed_too(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    bad = {**JOB, "schedule": "61 * * * *"}
    first = await client.post("/api/jobs", headers=keyed(auth, "k-3"), json=bad)
    again = await client.post("/api/jobs", headers=keyed(auth, "k-3"), json=bad)
    assert (first.status_code, again.status_code) == (400, 400)
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"


async def test_a_retried_trigger_runs_once(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    await make_job(id="quick", payload={"seconds": 0.0})
    first = await client.post("/api/jobs/quick/trigger", headers=keyed(auth, "t-1"), json={"payload": {"seconds": 0}})
    assert first.status_code == 200

    async def ran() -> bool:
        return await Run.filter(job_id="quick", completed_at__isnull=False).exists()

    await wait_until(ran)
    again = await client.post("/api/jobs/quick/trigger", headers=keyed(auth, "t-1"), json={"payload": {"seconds": 0}})
    assert (again.status_code, again.json()) == (200, first.json())
    assert again.headers["idempotent-replayed"] == "true"
    await asyncio.sleep(0.3)
    assert await Run.filter(job_id="quick").count() == 1
    assert await Activity.filter(event="jobs.trigger").count() == 1


async def test_graphql_idempotency_key(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    create = (
        'mutation C($key: String) { createJob(input: {id: "gq", name: "G", type: "test_sleep", '
        'schedule: "@daily"}, idempotencyKey: $key) { ... on Job { id name } ... on UserError { code } } }'
    )
    first = await gql(client, auth, create, key="g-1")
    again = await gql(client, auth, create, key="g-1")
    assert first["data"] == again["data"] == {"createJob": {"id": "gq", "name": "G"}}, first
    assert await Job.filter(id="gq").count() == 1 and await Activity.filter(event="jobs.create").count() == 1
    other = await gql(client, auth, create.replace('name: "G"', 'name: "H"'), key="g-1")
    assert other["data"]["createJob"] == {"code": "idempotency_key_reused"}
    # A replay whose job was deleted since: the outcome says so (REST replays its 201 as it was).
    await client.delete("/api/jobs/gq", headers=auth)
    gone = await gql(client, auth, create.replace("{ code }", "{ __typename code }"), key="g-1")
    assert gone["data"]["createJob"] == {"__typename": "JobNotFound", "code": "job_not_found"}
    await gql(client, auth, create, key="g-1b")  # made again for what follows
    # A key is one request, whichever transport carried it first.
    rest = await client.post("/api/jobs", headers=keyed(auth, "g-1"), json={**JOB, "id": "gq"})
    assert (rest.status_code, rest.json()["error"]) == (422, "idempotency_key_reused")
    trigger = 'mutation { triggerJob(id: "gq", idempotencyKey: "g-2") { ... on JobActionResult { success } } }'
    assert (await gql(client, auth, trigger))["data"]["triggerJob"]["success"] is True
    assert (await gql(client, auth, trigger))["data"]["triggerJob"]["success"] is True
    await asyncio.sleep(0.3)
    assert await Run.filter(job_id="gq").count() == 1
    # An error is the first answer too.
    missing = 'mutation { triggerJob(id: "nope", idempotencyKey: "g-3") { __typename } }'
    first, again = await gql(client, auth, missing), await gql(client, auth, missing)
    assert first["data"] == again["data"] == {"triggerJob": {"__typename": "JobNotFound"}}


@pytest.mark.slow
async def test_concurrent_requests_with_one_key_run_once_across_two_instances(
    settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = settings_factory()
    token = make_token(settings)
    a = ApiProcess(settings, tmp_path, free_port(), name="api-a")
    b = ApiProcess(settings, tmp_path, free_port(), name="api-b", embedded_worker="false")
    with a, b:
        async with a.client() as on_a, b.client() as on_b:
            headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": "race-1"}
            creates = [(on_a if i % 2 else on_b).post("/api/jobs", headers=headers, json=JOB) for i in range(12)]
            answers = await asyncio.gather(*creates)
            assert {r.status_code for r in answers} == {201}
            assert len({r.text for r in answers}) == 1  # one answer, given to all
            assert sum("idempotent-replayed" not in r.headers for r in answers) == 1
            headers["Idempotency-Key"] = "race-2"
            trigger = {"payload": {"seconds": 0.5}}
            triggers = [
                (on_a if i % 2 else on_b).post("/api/jobs/once/trigger", headers=headers, json=trigger)
                for i in range(12)
            ]
            answers = await asyncio.gather(*triggers)
            assert {r.status_code for r in answers} == {200}
            assert sum("idempotent-replayed" not in r.headers for r in answers) == 1
            jobs = (await on_a.get("/api/jobs", headers={"Authorization": f"Bearer {token}"})).json()
            assert [j["id"] for j in jobs].count("once") == 1
            activity = (await on_b.get("/api/activity?jobId=once", headers={"Authorization": f"Bearer {token}"})).json()
            assert sorted(e["event"] for e in activity["logs"]) == ["jobs.create", "jobs.trigger"]
            logs = (await on_b.get("/api/jobs/once/logs", headers={"Authorization": f"Bearer {token}"})).json()
            assert logs["total"] == 1


async def test_a_request_that_outlived_its_claim_leaves_the_next_claim_alone(orm: Runtime) -> None:
    first_may_end, second_may_end = asyncio.Event(), asyncio.Event()
    runs: list[str] = []

    async def slow(name: str, gate: asyncio.Event) -> str:
        runs.append(name)
        await gate.wait()
        return name

    def once(name: str, gate: asyncio.Event) -> asyncio.Task[idempotency.Outcome]:
        return asyncio.ensure_future(
            idempotency.run_once(
                orm.redis, subject="5", key="lapse", request="same", operation=lambda: slow(name, gate)
            )
        )

    first = once("first", first_may_end)
    await wait_until(lambda: _ran(runs, 1))
    [key] = [k async for k in orm.redis.scan_iter(match="jg:idem:*")]
    await orm.redis.delete(key)  # its claim lapsed (CLAIM_SECONDS) while it still ran
    second = once("second", second_may_end)
    await wait_until(lambda: _ran(runs, 2))
    first_may_end.set()
    assert (await first).answer == "first"
    # The first neither stored its answer over the second's claim nor released it.
    record = json.loads(await orm.redis.get(key))
    assert record["state"] == "pending"
    second_may_end.set()
    assert (await second).answer == "second"
    third = await idempotency.run_once(orm.redis, subject="5", key="lapse", request="same", operation=_never)
    assert (third.answer, third.replayed, runs) == ("second", True, ["first", "second"])


async def test_a_cancelled_request_runs_on_and_its_answer_is_replayed(orm: Runtime) -> None:
    gate = asyncio.Event()

    async def work() -> str:
        await gate.wait()
        return "done"

    request = asyncio.ensure_future(
        idempotency.run_once(orm.redis, subject="5", key="gone", request="r", operation=work)
    )
    await asyncio.sleep(0.05)
    request.cancel()  # the client went away mid-request
    with pytest.raises(asyncio.CancelledError):
        await request
    gate.set()

    [key] = [k async for k in orm.redis.scan_iter(match="jg:idem:*")]

    async def stored() -> bool:
        raw = await orm.redis.get(key)
        return raw is not None and json.loads(raw)["state"] == "done"

    await wait_until(stored)
    retry = await idempotency.run_once(orm.redis, subject="5", key="gone", request="r", operation=_never)
    assert (retry.answer, retry.replayed) == ("done", True)


async def _ran(runs: list[str], count: int) -> bool:
    return len(runs) >= count


async def _never() -> str:
    raise AssertionError("a replay must not run the operation")
