"""Database wiring: the tortoise config, migrations, and a check that the schema is current."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from tortoise import Tortoise
from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.migrations.api import migrate as tortoise_migrate

from app.adapters.tortoise import setup
from app.platform.config import Settings, redacted

MODEL_MODULES = ["app.data.jobs", "app.data.runs", "app.data.skipped_fires", "app.data.activity", "app.data.app_tables"]
APP_LABEL = "models"


def _connection_url(settings: Settings) -> str:
    """SQLite runs in WAL mode (tortoise's default); synchronous=NORMAL is the setting SQLite recommends
    with WAL: a commit survives any crash of the process and only a power cut can lose the last ones,
    and it no longer waits for an fsync, which otherwise bounds a worker's runs per second."""
    url = settings.database_url
    if settings.sqlite_path() is None or "synchronous=" in url:
        return url
    return url + ("&" if "?" in url else "?") + "synchronous=NORMAL"


def tortoise_config(settings: Settings) -> dict[str, Any]:
    return {
        "connections": {"default": setup.connection(_connection_url(settings))},
        "apps": {
            APP_LABEL: {
                "models": MODEL_MODULES,
                "default_connection": "default",
                "migrations": "app.migrations",
            }
        },
        "use_tz": True,
        "timezone": "UTC",
    }


def ensure_sqlite_dir(settings: Settings) -> None:
    path = settings.sqlite_path()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)


async def migrate(settings: Settings) -> None:
    """Apply every pending migration, then release the connections it opened."""
    ensure_sqlite_dir(settings)
    try:
        await tortoise_migrate(config=tortoise_config(settings))
    finally:
        await Tortoise.close_connections()


async def pending_migrations(settings: Settings) -> list[str]:
    """Names of migrations not yet applied; empty when the schema is current."""
    ensure_sqlite_dir(settings)
    return await setup.pending(tortoise_config(settings), APP_LABEL)


async def connect(settings: Settings) -> None:
    """Start the ORM in a process that is not the API (whose lifespan registers it with FastAPI)."""
    await setup.init(tortoise_config(settings))


async def disconnect() -> None:
    await Tortoise.close_connections()


def commit_version(client: BaseDBAsyncClient) -> Hashable | None:
    """A value, compared with ==, that differs once anyone has committed to the database since it was last
    read through this client, or None where the backend cannot tell (PostgreSQL; a transaction's client).

    Lets a hot read reuse its previous result while nothing has been written (app/adapters/tortoise/sqlite.py).
    """
    probe = getattr(client, "data_version", None)
    version: Hashable | None = probe() if callable(probe) else None
    return version


class SchemaBehind(RuntimeError):
    """The database lacks migrations this code needs."""


async def ensure_current(settings: Settings) -> None:
    """Apply migrations when MIGRATE_ON_START says so; otherwise refuse to run on a stale schema."""
    if settings.migrate_on_start:
        await migrate(settings)
        return
    pending = await pending_migrations(settings)
    if pending:
        raise SchemaBehind(
            f"The database at {redacted(settings.database_url)} is behind: {', '.join(pending)} not applied. "
            "Run `make migrate` (or `jobs-gateway migrate`), or set MIGRATE_ON_START=true."
        )
