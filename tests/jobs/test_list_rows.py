"""The job list's own row reading and JSON (app/jobs/service.py, app/jobs/schemas.py) give what tortoise
and `response_model` gave: the same Job values and the same wire object, on both backends."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
from tortoise import fields
from tortoise.transactions import in_transaction

from app.data import jobs as jobs_table
from app.data.jobs import Job
from app.engine import leases
from app.jobs import service as jobs_service
from app.jobs.schemas import JobOut, job_wire
from app.jobs.service import JobState
from app.platform.db import commit_version
from app.platform.runtime import Runtime
from app.platform.timefmt import iso_ms
from tests.factories import make_job
from tests.support.processes import commit_from_another_process

WHEN = datetime(2026, 3, 4, 5, 6, 7, 891_234, tzinfo=UTC)


async def _varied_jobs() -> None:
    await make_job(id="a-plain")  # nulls: last run, result, duration, timezone, timeout
    await make_job(
        id="b-full",
        name="Ünïcode ✓",
        description="",
        payload={"days_old": 30, "nested": {"list": [1, 2.5, None, "x"]}, "flag": True},
        schedule="@every 24h",
        timezone="Europe/Paris",
        timeout_seconds=600,
        enabled=False,
        builtin=True,
        next_run_at=WHEN,
        last_run_at=WHEN.astimezone(timezone(timedelta(hours=-3))),  # stored as UTC whatever the zone given
        last_result="error",
        last_duration_ms=1234,
        retry={"maxAttempts": 3, "backoff": 10.0, "maxBackoff": 3600.0, "multiplier": 2.0, "jitter": 0.1},
        overlap="buffer_one",
        catch_up_window_seconds=90.0,
        catch_up_policy="none",
        pause_after_failures=3,
        consecutive_failures=2,
        last_skipped_at=WHEN,
        last_skip_reason="overlap",
    )


def _values(job: Job) -> dict[str, object]:
    return {name: getattr(job, name) for name in Job._meta.fields_map if name in Job._meta.fields_db_projection}


async def test_rows_become_the_jobs_tortoise_would_build(orm: Runtime) -> None:
    await _varied_jobs()
    sql = Job.all().order_by("id").sql()
    expected: list[Job] = await Job.raw(sql)
    got = jobs_table.from_rows(await Job._meta.db.execute_query_dict(sql))
    assert [j.id for j in got] == [j.id for j in expected] == ["a-plain", "b-full"]
    for mine, theirs in zip(got, expected, strict=True):
        assert _values(mine) == _values(theirs)
        for name, field in Job._meta.fields_map.items():  # same types and zones, not only equal values
            if isinstance(field, fields.DatetimeField) and getattr(theirs, name) is not None:
                assert getattr(mine, name).utcoffset() == getattr(theirs, name).utcoffset() == timedelta(0)
            assert type(getattr(mine, name)) is type(getattr(theirs, name)), name
        assert vars(mine) == vars(theirs)  # every attribute tortoise sets, its bookkeeping included
    # Instances that behave as models: saved back, they change the row and only it.
    got[0].name = "Renamed"
    await got[0].save()
    assert (await Job.get(id="a-plain")).name == "Renamed"
    assert (await Job.get(id="b-full")).name == "Ünïcode ✓"


async def test_wire_object_is_what_the_response_model_dumps(orm: Runtime) -> None:
    await _varied_jobs()
    await leases.acquire(orm.redis, "b-full", "token-1", 30)
    try:
        states = await jobs_service.list_jobs(orm)
    finally:
        await leases.release(orm.redis, "b-full", "token-1")
    assert [(s.job.id, s.running) for s in states] == [("a-plain", False), ("b-full", True)]
    for state in states:
        wire = job_wire(state)
        assert wire == JobOut.of(state).model_dump(mode="json", by_alias=True)
        assert list(wire) == list(JobOut.of(state).model_dump(by_alias=True))  # the spec's order
    full = job_wire(states[1])
    assert full == {
        "id": "b-full",
        "name": "Ünïcode ✓",
        "description": "",
        "enabled": False,
        "running": True,
        "schedule": "@every 24h",
        "lastRun": "2026-03-04T05:06:07.891Z",
        "nextRun": None,  # disabled: no pending fire, whatever the row holds
        "lastResult": "error",
        "lastDuration": 1234,
        "type": "test_sleep",
        "payload": {"days_old": 30, "nested": {"list": [1, 2.5, None, "x"]}, "flag": True},
        "timezone": "Europe/Paris",
        "timeout": 600.0,
        "builtin": True,
        "retry": {"maxAttempts": 3, "backoff": "10s", "maxBackoff": "1h", "multiplier": 2.0, "jitter": 0.1},
        "overlap": "buffer_one",
        "catchUp": {"window": "1m30s", "policy": "none"},
        "pauseAfterFailures": 3,
        "consecutiveFailures": 2,
        "cancelling": False,
        "lastSkippedFire": {"fireAt": iso_ms(WHEN), "reason": "overlap"},
        "version": 1,
    }
    plain = job_wire(states[0])
    assert (plain["retry"], plain["overlap"], plain["pauseAfterFailures"]) == (None, "skip", None)
    assert plain["catchUp"] == {"window": "5m", "policy": "latest"}  # the global default
    assert isinstance(full["timeout"], float)


async def test_list_and_get_answer_the_response_models_json(
    client: httpx.AsyncClient, auth: dict[str, str], runtime: Runtime
) -> None:
    await _varied_jobs()
    listed = await client.get("/api/jobs", headers=auth)
    assert listed.status_code == 200 and listed.headers["content-type"] == "application/json"
    states: list[JobState] = await jobs_service.list_jobs(runtime)
    assert listed.json() == [JobOut.of(s).model_dump(mode="json", by_alias=True) for s in states]
    one = await client.get("/api/jobs/b-full", headers=auth)
    assert one.status_code == 200 and one.headers["content-type"] == "application/json"
    assert one.json() == JobOut.of(await jobs_service.get(runtime, job_id="b-full")).model_dump(
        mode="json", by_alias=True
    )
    assert '"name":"Ünïcode ✓"' in one.text  # UTF-8 as pydantic writes it, not \\u escapes


async def test_list_renders_again_only_the_jobs_that_changed(orm: Runtime) -> None:
    """`list_rendered` reuses a rendering only for a job whose row and running flag are unchanged: a change
    made anywhere (here a plain UPDATE, as another process would make it; a lease; a delete and a re-create
    under the same id) shows on the next call."""
    rendered: list[str] = []

    def render(state: JobState) -> dict[str, object]:
        rendered.append(state.job.id)
        return job_wire(state)

    async def listing() -> list[dict[str, object]]:
        got = await jobs_service.list_rendered(orm, render)
        fresh = [job_wire(s) for s in await jobs_service.list_jobs(orm)]
        assert got == fresh  # whatever was reused, the answer is the stores' current one
        return got

    await make_job(id="a")
    await make_job(id="b")
    await make_job(id="c", name="Old C")
    first = await listing()
    assert rendered == ["a", "b", "c"]
    rendered.clear()

    second = await listing()
    assert rendered == []  # nothing changed: nothing rebuilt
    assert all(x is y for x, y in zip(first, second, strict=True))

    await Job.filter(id="a").update(last_result="error", last_duration_ms=7)
    await leases.acquire(orm.redis, "b", "token-b", 30)
    await Job.filter(id="c").delete()
    third = await listing()
    assert rendered == ["a", "b"]
    assert [(j["id"], j["lastResult"], j["running"]) for j in third] == [("a", "error", False), ("b", None, True)]
    assert third[1] is not second[1]
    rendered.clear()

    await leases.release(orm.redis, "b", "token-b")
    await make_job(id="c", name="New C")
    fourth = await listing()
    assert rendered == ["b", "c"]
    assert (fourth[1]["running"], fourth[2]["name"]) == (False, "New C")
    assert fourth[0] is third[0]


async def test_on_sqlite_the_rows_are_read_again_only_after_a_commit(orm: Runtime, db_backend: str) -> None:
    """The list reuses its previous rows while nobody has committed (SQLite's data_version), and reads again
    after any commit, another process's included; PostgreSQL cannot tell, so it reads every time."""
    await make_job(id="a", name="Before")
    first, _ = await jobs_table.all_rows()
    again, reusable = await jobs_table.all_rows()
    if db_backend == "postgres":
        assert again is not first and again == first and not reusable
        return
    assert again is first and reusable
    answer = await jobs_service.list_rendered(orm, job_wire)
    assert await jobs_service.list_rendered(orm, job_wire) is answer  # same rows, same running flags
    await leases.acquire(orm.redis, "a", "token-a", 30)  # Redis changed, the database did not
    running = await jobs_service.list_rendered(orm, job_wire)
    assert running is not answer and running[0]["running"] is True
    await leases.release(orm.redis, "a", "token-a")

    client = Job._meta.db
    path = client.filename  # type: ignore[attr-defined]
    await commit_from_another_process(path, "UPDATE job SET name = 'After'")
    after, _ = await jobs_table.all_rows()
    assert after is not first and after[0]["name"] == "After"
    assert (await jobs_service.list_rendered(orm, job_wire))[0]["name"] == "After"


@pytest.mark.sqlite_only
async def test_a_commit_landing_just_after_the_rows_were_read_shows_on_the_next_list(
    orm: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The commit version is read before the rows: a commit between the two must make the next call read again
    (read after the rows, it would vouch for rows older than itself, and the change would never show)."""
    await make_job(id="a", name="Before")
    client = Job._meta.db
    path = client.filename  # type: ignore[attr-defined]
    read = client.execute_query_dict

    async def read_then_another_process_commits(query: str, values: list[Any] | None = None) -> list[dict[str, Any]]:
        rows = await read(query, values)
        if "job_run" not in query:
            await commit_from_another_process(path, "UPDATE job SET name = 'After'")
        return rows

    monkeypatch.setattr(client, "execute_query_dict", read_then_another_process_commits)
    assert (await jobs_service.list_rendered(orm, job_wire))[0]["name"] == "Before"
    monkeypatch.undo()
    assert (await jobs_service.list_rendered(orm, job_wire))[0]["name"] == "After"


async def test_a_list_inside_a_transaction_is_never_reused_after_it(orm: Runtime) -> None:
    """Inside a transaction the list reads the transaction's own, uncommitted rows: nothing read there may
    be reused once it has rolled back (a transaction's client cannot tell commits: `commit_version` is None)."""
    await make_job(id="a", name="Committed")
    assert (await jobs_service.list_rendered(orm, job_wire))[0]["name"] == "Committed"
    with pytest.raises(RuntimeError):
        async with in_transaction() as conn:
            await Job.filter(id="a").using_db(conn).update(name="Uncommitted")
            assert commit_version(Job._meta.db) is None
            assert (await jobs_service.list_rendered(orm, job_wire))[0]["name"] == "Uncommitted"
            raise RuntimeError("roll back")
    assert (await jobs_service.list_rendered(orm, job_wire))[0]["name"] == "Committed"


async def test_jobs_listed_from_shared_rows_are_independent_copies(orm: Runtime) -> None:
    """`list_jobs` builds its Job instances from the rows `jobs_table.all_rows` may hand out again: changing a listed
    job (its JSON payload included) must change neither those rows nor the next listing."""
    await make_job(id="a", payload={"days_old": 30})
    first = await jobs_service.list_jobs(orm)
    first[0].job.payload["days_old"] = 1
    first[0].job.name = "changed in memory"
    again = await jobs_service.list_jobs(orm)
    assert again[0].job.payload == {"days_old": 30}
    assert again[0].job.name != "changed in memory"
