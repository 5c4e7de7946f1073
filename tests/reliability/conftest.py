"""Fixtures of the reliability suite: one database per scenario module (a copy of the migrated SQLite
template, or a clone of the PostgreSQL template with `--backend postgres`) and the ORM on it."""

from __future__ import annotations

import itertools
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from tortoise import Tortoise

from app.job_types import registry
from app.platform import db
from app.platform.redis_pool import connect_redis
from app.platform.runtime import Runtime
from tests.reliability.harness import Cluster
from workers.settings import BUILTIN_HANDLERS

_databases = itertools.count()


@pytest.fixture(scope="module")
def module_database_url(
    request: pytest.FixtureRequest, db_backend: str, tmp_path_factory: pytest.TempPathFactory
) -> str:
    if db_backend == "postgres":
        cluster, template = request.getfixturevalue("postgres_template")
        name = f"jg_rel_{next(_databases)}"
        cluster.psql(f"CREATE DATABASE {name} TEMPLATE {template}")
        return str(cluster.url(name))
    path = tmp_path_factory.mktemp("reliability-db") / "jobs.sqlite3"
    shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
    return f"sqlite://{path}"


@pytest.fixture(scope="module")
def module_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("reliability")


@pytest_asyncio.fixture
async def cluster_orm(cluster: Cluster) -> AsyncIterator[Runtime]:
    """The test's own view of the cluster's database and Redis, to check what the processes wrote."""
    await Tortoise.init(config=db.tortoise_config(cluster.settings), _enable_global_fallback=True)
    registry.load([BUILTIN_HANDLERS, *cluster.settings.job_type_modules])
    redis = await connect_redis(cluster.settings)
    try:
        yield Runtime(settings=cluster.settings, redis=redis)
    finally:
        await redis.aclose()
        await Tortoise.close_connections()
