"""Log page totals come from counters the database keeps on job_run (migration 0003), exact whoever writes."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest
from tortoise import connections

from app.data.runs import Run, RunCount
from app.runs import service as runs_service
from tests.factories import make_job

T0 = datetime(2026, 1, 1, tzinfo=UTC)


async def add_runs(job_id: str, n: int, prefix: str) -> None:
    await Run.bulk_create(
        [
            Run(job_id=job_id, token=f"{prefix}-{i}", triggered_by="test", started_at=T0, completed_at=T0)
            for i in range(n)
        ]
    )


@pytest.mark.postgres
async def test_totals_follow_inserts_and_deletes_of_any_kind(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    await make_job(id="a")
    await make_job(id="b")
    await add_runs("a", 7, "a")
    await add_runs("b", 3, "b")
    await Run.create(job_id="gone", token="g", triggered_by="test", started_at=T0)  # a deleted job's run
    assert await runs_service.run_totals(["a"]) == 7
    assert await runs_service.run_totals(None) == 11

    # A bulk ORM delete, then raw SQL behind the application's back: the counters follow both.
    await Run.filter(job_id="a", token__in=["a-0", "a-1"]).delete()
    await connections.get("default").execute_script("DELETE FROM job_run WHERE job_id = 'b'")
    page = (await client.get("/api/jobs/a/logs", headers=auth)).json()
    assert (page["total"], len(page["logs"])) == (5, 5)
    everything = (await client.get("/api/jobs/logs/all", headers=auth)).json()
    assert everything["total"] == await Run.all().count() == 6
    assert {r.job_id: r.runs for r in await RunCount.all()} == {"a": 5, "b": 0, "gone": 1}


@pytest.mark.postgres
async def test_graphql_job_logs_totals_come_from_the_counters(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    await make_job(id="a")
    await add_runs("a", 4, "a")
    query = '{ job(id: "a") { logs(limit: 2) { ... on JobLogPage { total logs { jobId } } } } }'
    body = (await client.post("/graphql", json={"query": query}, headers=auth)).json()
    assert body["data"]["job"]["logs"]["total"] == 4
    assert len(body["data"]["job"]["logs"]["logs"]) == 2
