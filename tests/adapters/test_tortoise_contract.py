"""What app/adapters/tortoise/ relies on in tortoise-orm 1.1.9 (and aiosqlite, asyncpg, pypika-tortoise), pinned.

The source pins cover the tortoise code our clients replace or wrap (the transaction and connection contexts, the
SQLite client's connect, inserts and reads) and the one `rows` mimics (`Model._init_from_db`). When one fails:
read the new source, bring the adapter in line, then update the digest here. The behaviours run here and in:
tests/jobs/test_list_rows.py (rows become exactly the jobs `_init_from_db` builds), tests/test_db_transactions.py
(a transaction cancelled as it begins gives its lock or pool connection back), tests/test_sqlite_client.py
(inline reads and inserts).
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect

import pytest
from tortoise import Tortoise, connections
from tortoise.backends.asyncpg.client import AsyncpgDBClient
from tortoise.backends.base.client import ConnectionWrapper, TransactionContextPooled
from tortoise.backends.sqlite.client import SqliteClient, SqliteTransactionContext
from tortoise.migrations.executor import MigrationExecutor
from tortoise.migrations.schema_editor.asyncpg import AsyncpgSchemaEditor
from tortoise.migrations.schema_editor.sqlite import SqliteSchemaEditor
from tortoise.models import Model

from app.adapters.tortoise import rows, setup
from app.data.jobs import Job
from app.data.runs import Run
from app.platform import db
from app.platform.config import Settings
from app.platform.runtime import Runtime
from app.platform.timefmt import utcnow
from tests.adapters.pins import Sources, check_source, check_version
from tests.factories import make_job

VERSIONS = {"tortoise-orm": "1.1.9", "pypika-tortoise": "0.6.5", "aiosqlite": "0.22.1", "asyncpg": "0.32.0"}
SOURCES: Sources = {
    "SqliteTransactionContext.__aenter__": (SqliteTransactionContext.__aenter__, "0fb0ed89e66c8595"),
    "ConnectionWrapper.__aenter__": (ConnectionWrapper.__aenter__, "34cbbc3cdf1ce8f7"),
    "SqliteClient.create_connection": (SqliteClient.create_connection, "4696f8371186c309"),
    "SqliteClient.execute_insert": (SqliteClient.execute_insert, "984cbaf08c562371"),
    "SqliteClient.execute_query_dict": (SqliteClient.execute_query_dict, "8c96d34e6cd2904a"),
    "SqliteClient._in_transaction": (SqliteClient._in_transaction, "f40b90ec19d27e53"),
    "TransactionContextPooled.__aenter__": (TransactionContextPooled.__aenter__, "aab85fd1e6ac5f6d"),
    "AsyncpgDBClient._in_transaction": (AsyncpgDBClient._in_transaction, "9aeeb141c6ff864d"),
    "Model._init_from_db": (Model._init_from_db, "5c5ac3cc150db023"),
}


ADAPTER = "app/adapters/tortoise/"


@pytest.mark.sqlite_only
@pytest.mark.parametrize("package", VERSIONS)
def test_the_versions_are_the_ones_the_adapter_was_written_for(package: str) -> None:
    check_version(package, VERSIONS[package], ADAPTER)


@pytest.mark.sqlite_only
@pytest.mark.parametrize("name", SOURCES)
def test_the_code_the_adapter_replaces_or_mimics_is_unchanged(name: str) -> None:
    check_source(name, SOURCES, ADAPTER)


async def test_the_private_names_the_adapter_uses_exist(orm: Runtime) -> None:
    meta = Job._meta
    for name in ("db", "db_native_fields", "db_default_fields", "db_complex_fields", "db_pk_column"):
        assert hasattr(meta, name), name
    assert isinstance(meta.generated_db_fields, tuple | list | set | frozenset)
    # The instance state rows.instances sets, as _init_from_db sets it.
    init_from_db = inspect.getsource(Model._init_from_db)
    for name in ("_partial", "_saved_in_db", "_custom_generated_pk", "_await_when_save"):
        assert name in init_from_db, name


async def test_our_clients_get_their_backends_schema_editor(orm: Runtime) -> None:
    """tortoise's migrations pick the schema editor by the client's module name."""
    client = connections.get("default")
    editor = MigrationExecutor(client, db.tortoise_config(orm.settings)["apps"])._schema_editor()
    expected = SqliteSchemaEditor if client.capabilities.dialect == "sqlite" else AsyncpgSchemaEditor
    assert type(editor) is expected, (type(client).__module__, type(editor))


async def test_a_run_built_from_its_own_write_is_in_the_state_a_read_gives(orm: Runtime) -> None:
    started = utcnow().replace(microsecond=0)
    stored = await Run.create(job_id="a", token="t-1", triggered_by="user:1", started_at=started)
    read = await Run.get(id=stored.id)
    built = rows.loaded(
        Run, id=stored.id, job_id="a", token="t-1", attempt=1, triggered_by="user:1", fire_at=None, started_at=started
    )
    assert vars(built) == vars(read)
    built.details = "saved back"
    await built.save()  # an update of that row, not a second insert
    assert await Run.filter(token="t-1").values_list("details", flat=True) == ["saved back"]


async def test_a_compiled_query_runs_as_tortoise_would_run_it(orm: Runtime) -> None:
    await make_job(id="compiled")
    sql, params = rows.parameterized(Job.filter(id="compiled").limit(1))
    found = await rows.client_of(Job).execute_query_dict(sql, params)
    assert [r["id"] for r in found] == ["compiled"]
    assert [j.id for j in rows.instances(Job, found)] == ["compiled"]


@pytest.mark.sqlite_only
@pytest.mark.parametrize(
    ("url", "engine"),
    [
        ("sqlite:///tmp/x.sqlite3", "app.adapters.tortoise.sqlite"),
        ("sqlite://:memory:", "app.adapters.tortoise.sqlite"),
        ("postgres://u:p@127.0.0.1:5432/jobs", "app.adapters.tortoise.asyncpg"),
        ("postgresql://u:p@127.0.0.1/jobs?minsize=2", "app.adapters.tortoise.asyncpg"),
    ],
)
def test_a_database_url_gets_our_client_for_its_backend(url: str, engine: str) -> None:
    config = setup.connection(url)
    assert config["engine"] == engine
    assert set(config) == {"engine", "credentials"}


async def test_init_serves_tasks_that_do_not_descend_from_the_initialising_one(settings: Settings) -> None:
    """A standalone worker initialises tortoise in arq's start-up task; its jobs run in other tasks."""
    await asyncio.create_task(setup.init(db.tortoise_config(settings)), context=contextvars.Context())
    try:
        assert await Job.all().count() >= 0  # this task's context never saw the initialisation
    finally:
        await Tortoise.close_connections()


async def test_pending_lists_what_is_not_applied(settings: Settings) -> None:
    config = db.tortoise_config(settings)
    assert await setup.pending(config, db.APP_LABEL) == []  # the test database is migrated
    assert await setup.pending(config, "another-app") == []
