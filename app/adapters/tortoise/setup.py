"""tortoise-orm 1.1.9's set-up, where it goes past tortoise's documented API.

- `connection(url)`: tortoise's parse of a database URL (`expand_db_url`), with our clients (sqlite, asyncpg in
  this package) in place of tortoise's own.
- `init(config)`: `Tortoise.init` with `_enable_global_fallback`. tortoise 1.x keeps its state in a context
  variable; a standalone worker's tasks (arq runs each job in a task of its own) do not all descend from the one
  that initialised it, and need the fallback that FastAPI's `RegisterTortoise` turns on for the API.
- `pending(config)`: the migrations not applied yet, from tortoise's migration executor's plan.

Pinned by tests/adapters/test_tortoise_contract.py.
"""

from __future__ import annotations

from typing import Any

from tortoise import Tortoise
from tortoise.backends.base.config_generator import expand_db_url
from tortoise.migrations.executor import MigrationExecutor

# Our clients by the engine tortoise would pick. Both give a transaction cancelled as it begins its connection back;
# SQLite's also answers short reads on the event loop's thread. The module names hold "sqlite" and "asyncpg":
# tortoise's migrations pick their schema editor by them.
CLIENTS = {
    "tortoise.backends.sqlite": "app.adapters.tortoise.sqlite",
    "tortoise.backends.asyncpg": "app.adapters.tortoise.asyncpg",
}


def connection(url: str) -> dict[str, Any]:
    """The connection config of a database URL, with our client for its backend."""
    config: dict[str, Any] = expand_db_url(url)
    config["engine"] = CLIENTS.get(config["engine"], config["engine"])
    return config


async def init(config: dict[str, Any]) -> None:
    """Start tortoise for a process whose tasks do not all descend from this one."""
    await Tortoise.init(config=config, _enable_global_fallback=True)


async def pending(config: dict[str, Any], app_label: str) -> list[str]:
    """Names of the app's migrations not applied yet (connections opened for it are closed again)."""
    await Tortoise.init(config=config, init_connections=False)
    try:
        executor = MigrationExecutor(Tortoise.get_connection("default"), config["apps"])
        steps = await executor.plan(None)
        forward = [s.migration for s in steps if not s.backward]
        return [f"{m.app_label}.{m.name}" for m in forward if m.app_label == app_label]
    finally:
        await Tortoise.close_connections()
