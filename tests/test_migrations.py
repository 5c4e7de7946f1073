"""Migrations 0004 (run lifecycle), 0005 (managing jobs) and 0006 (run output) on a database that holds data, forward
and back, on the backend under test."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from tortoise import Tortoise, connections
from tortoise.exceptions import IntegrityError
from tortoise.migrations.api import migrate as tortoise_migrate

from app.platform import db
from app.platform.config import Settings

BEFORE, LATEST = f"{db.APP_LABEL}.0003_run_counts", None
FIRE = datetime(2026, 1, 1, 10, tzinfo=UTC)


async def migrate_to(settings: Settings, target: str | None) -> None:
    try:
        await tortoise_migrate(config=db.tortoise_config(settings), target=target)
    finally:
        await Tortoise.close_connections()


async def sql(settings: Settings, query: str, *values: Any) -> list[dict[str, Any]]:
    await Tortoise.init(config=db.tortoise_config(settings))
    try:
        conn = connections.get("default")
        if conn.capabilities.dialect == "postgres":
            for i in range(query.count("?")):
                query = query.replace("?", f"${i + 1}", 1)
        return await conn.execute_query_dict(query, list(values))
    finally:
        await Tortoise.close_connections()


async def insert_run(settings: Settings, token: str, fire_at: datetime | None, attempt: int = 1) -> None:
    values: list[Any] = ["a", token, "scheduler", fire_at, FIRE, attempt]
    await sql(
        settings,
        "INSERT INTO job_run (job_id, token, triggered_by, fire_at, started_at, attempt) VALUES (?, ?, ?, ?, ?, ?)",
        *values,
    )


async def test_runs_survive_the_new_unique_key_forward_and_back(settings: Settings) -> None:
    await migrate_to(settings, BEFORE)
    await insert_run(settings, "t1", FIRE)
    await insert_run(settings, "t2", None)
    await insert_run(settings, "t3", None)
    stamp = FIRE
    await sql(
        settings,
        "INSERT INTO job (id, name, description, type, payload, schedule, enabled, builtin, created_at, updated_at) "
        "VALUES ('j', 'J', '', 't', '{}', '@daily', ?, ?, ?, ?)",
        True,
        False,
        stamp,
        stamp,
    )
    await migrate_to(settings, LATEST)

    rows = await sql(settings, "SELECT id, token, attempt FROM job_run ORDER BY id")
    assert [(r["id"], r["token"], r["attempt"]) for r in rows] == [(1, "t1", 1), (2, "t2", 1), (3, "t3", 1)]
    # The run-count triggers came back with the table: counted before, and counting after.
    assert await sql(settings, "SELECT runs FROM job_run_count WHERE job_id = 'a'") == [{"runs": 3}]
    await insert_run(settings, "t4", FIRE, attempt=2)  # a retry of the same fire: now allowed
    assert await sql(settings, "SELECT runs FROM job_run_count WHERE job_id = 'a'") == [{"runs": 4}]
    assert (await sql(settings, "SELECT id FROM job_run WHERE token = 't4'"))[0]["id"] == 4  # ids go on
    with pytest.raises(IntegrityError):
        await insert_run(settings, "t5", FIRE, attempt=2)  # the same attempt twice: still refused
    # A job that existed before takes the new columns' defaults: today's behaviour.
    [job] = await sql(settings, "SELECT overlap, catch_up_policy, consecutive_failures, retry FROM job")
    assert (job["overlap"], job["catch_up_policy"], job["consecutive_failures"], job["retry"]) == (
        "skip",
        "latest",
        0,
        None,
    )

    # Rolled back while it holds two attempts of one fire, the old key cannot come back: nothing changes.
    with pytest.raises(IntegrityError):
        await migrate_to(settings, BEFORE)
    assert len(await sql(settings, "SELECT id FROM job_run")) == 4
    await sql(settings, "DELETE FROM job_run WHERE token = 't4'")
    await migrate_to(settings, BEFORE)
    rows = await sql(settings, "SELECT token FROM job_run ORDER BY id")
    assert [r["token"] for r in rows] == ["t1", "t2", "t3"]
    with pytest.raises(IntegrityError):
        await insert_run(settings, "t6", FIRE)  # the old key is back
    await migrate_to(settings, LATEST)
    assert len(await sql(settings, "SELECT id FROM job_run")) == 3


async def test_managing_jobs_columns_come_with_defaults_and_go_back(settings: Settings) -> None:
    await migrate_to(settings, f"{db.APP_LABEL}.0004_run_lifecycle")
    await sql(
        settings,
        "INSERT INTO job (id, name, description, type, payload, schedule, enabled, builtin, created_at, updated_at) "
        "VALUES ('j', 'J', '', 't', '{}', '@daily', ?, ?, ?, ?)",
        True,
        False,
        FIRE,
        FIRE,
    )
    await insert_run(settings, "t1", FIRE)
    await sql(
        settings,
        "INSERT INTO activity (event, job_id, actor, details, created_at) "
        "VALUES ('jobs.update', 'j', 'user:1', '{}', ?)",
        FIRE,
    )
    await migrate_to(settings, LATEST)
    assert await sql(settings, "SELECT version FROM job") == [{"version": 1}]
    assert await sql(settings, "SELECT payload FROM job_run") == [{"payload": None}]
    assert await sql(settings, "SELECT request_id, client_address FROM activity") == [
        {"request_id": None, "client_address": None}
    ]
    await migrate_to(settings, f"{db.APP_LABEL}.0004_run_lifecycle")
    assert [r["id"] for r in await sql(settings, "SELECT * FROM job")] == ["j"]
    assert "version" not in (await sql(settings, "SELECT * FROM job"))[0]
    assert "payload" not in (await sql(settings, "SELECT * FROM job_run"))[0]
    assert "request_id" not in (await sql(settings, "SELECT * FROM activity"))[0]


async def test_run_output_columns_and_log_table_come_and_go_back(settings: Settings) -> None:
    await migrate_to(settings, f"{db.APP_LABEL}.0005_managing_jobs")
    await insert_run(settings, "t1", FIRE)
    await migrate_to(settings, LATEST)
    assert await sql(settings, "SELECT output, progress, error_type, traceback FROM job_run") == [
        {"output": None, "progress": None, "error_type": None, "traceback": None}
    ]
    [run] = await sql(settings, "SELECT id FROM job_run")
    await sql(
        settings,
        "INSERT INTO run_log (run_id, seq, at, level, message) VALUES (?, 1, ?, 'info', 'hello')",
        run["id"],
        FIRE,
    )
    with pytest.raises(IntegrityError):  # one line per (run, seq)
        await sql(
            settings,
            "INSERT INTO run_log (run_id, seq, at, level, message) VALUES (?, 1, ?, 'info', 'again')",
            run["id"],
            FIRE,
        )
    await migrate_to(settings, f"{db.APP_LABEL}.0005_managing_jobs")
    row = (await sql(settings, "SELECT * FROM job_run"))[0]
    assert row["token"] == "t1"
    assert not {"output", "progress", "error_type", "traceback"} & set(row)
    tables = "SELECT name FROM sqlite_master WHERE type = 'table'"
    if settings.database_url.startswith("postgres"):
        tables = "SELECT tablename AS name FROM pg_tables WHERE schemaname = current_schema()"
    assert "run_log" not in {t["name"] for t in await sql(settings, tables)}
    # The run-count triggers of 0003 survived the rollback: a new run still counts.
    await insert_run(settings, "t2", None)
    assert await sql(settings, "SELECT runs FROM job_run_count WHERE job_id = 'a'") == [{"runs": 2}]
