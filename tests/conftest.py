"""Real components for every test: a redis-server started for the session, SQLite files per test
(copied from one migrated template), the app with its embedded arq worker, and signed tokens."""

from __future__ import annotations

import asyncio
import itertools
import queue
import shutil
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import redis as sync_redis
from fastapi import FastAPI
from tortoise import Tortoise

from app.api.auth import ADMIN_PERMISSION, issue_token
from app.job_types import registry
from app.main import create_app
from app.platform import db
from app.platform.config import Settings, get_settings
from app.platform.redis_pool import connect_redis
from app.platform.runtime import Runtime
from tests.support.servers import PostgresCluster, RedisServer, postgres_unavailable_reason
from workers.settings import BUILTIN_HANDLERS

SECRET = "test-secret-" + "x" * 40
TEST_JOB_TYPES = "tests.support.job_types"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def pytest_addoption(parser: pytest.Parser) -> None:
    # One backend per session: tortoise caches dialect-specific SQL on the models, so a process
    # (like the service itself) talks to one kind of database.
    parser.addoption("--backend", choices=["sqlite", "postgres"], default="sqlite", help="database for the tests")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "sqlite_only: tests of SQLite-specific code, or of code that never touches the database (settings, logs,"
        " tokens, the SDL, the server helpers), skipped with --backend postgres",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test runs on both backends, except those of SQLite-specific or database-free code."""
    if config.getoption("--backend") != "postgres":
        return
    skip = pytest.mark.skip(reason="SQLite-specific or database-free code: nothing more to test on PostgreSQL")
    for item in items:
        if item.get_closest_marker("sqlite_only"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def db_backend(request: pytest.FixtureRequest) -> str:
    return str(request.config.getoption("--backend"))


@pytest.fixture(scope="session")
def postgres_template() -> Iterator[tuple[PostgresCluster, str]]:
    """A throwaway cluster and a migrated template database that each test clones."""
    reason = postgres_unavailable_reason()
    if reason is not None:
        pytest.fail(f"PostgreSQL is needed for --backend postgres: {reason}")
    with PostgresCluster() as cluster:
        url = cluster.create_database("jg_template")
        asyncio.run(db.migrate(make_settings(database_url=url, redis_url="redis://127.0.0.1:1/0")))
        yield cluster, "jg_template"


class _ClonePool:
    """Clones of the template made ahead of time by a background thread.

    `CREATE DATABASE ... TEMPLATE` copies the system catalogs too and takes ~0.2 s, a third of an average
    PostgreSQL test; made while the previous test runs (which mostly waits on its app and worker), the
    clone is ready when the next test asks. Each test still gets a database nobody has touched.
    """

    AHEAD = 2

    def __init__(self, cluster: PostgresCluster, template: str) -> None:
        self.cluster, self.template = cluster, template
        self._names = (f"jg_test_{n}" for n in itertools.count())
        self._ready: queue.Queue[str | BaseException] = queue.Queue(maxsize=self.AHEAD)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _clone(self) -> str:
        name = next(self._names)
        self.cluster.psql(f"CREATE DATABASE {name} TEMPLATE {self.template}")
        return name

    def _fill(self) -> None:
        while not self._stop.is_set():
            try:
                item: str | BaseException = self._clone()
            except BaseException as exc:  # handed to the test, which retries in the foreground
                item = exc
            while not self._stop.is_set():
                try:
                    self._ready.put(item, timeout=0.2)
                    break
                except queue.Full:
                    continue
            if isinstance(item, BaseException):
                return

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._fill, name="postgres-clone-pool", daemon=True)
        self._thread.start()

    def take(self) -> str:
        if self._thread is None:
            self._start()
        item = self._ready.get(timeout=120)
        if isinstance(item, BaseException):
            # The thread has stopped. A clone that failed in the background (the cluster was briefly down,
            # say) is made again here, so a real failure surfaces in the test that needs the database.
            assert self._thread is not None
            self._thread.join()
            name = self._clone()
            self._start()
            return name
        return item

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)


@pytest.fixture(scope="session")
def postgres_clones(postgres_template: tuple[PostgresCluster, str]) -> Iterator[_ClonePool]:
    pool = _ClonePool(*postgres_template)
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Migrate once per session; each test copies the file, which is far faster than migrating."""
    path = tmp_path_factory.mktemp("template") / "template.sqlite3"
    settings = make_settings(database_url=f"sqlite://{path}", redis_url="redis://127.0.0.1:1/0")
    asyncio.run(db.migrate(settings))
    return path


def make_settings(**overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "app_env": "test",
        "jwt_secret": SECRET,
        "embedded_worker": True,
        "worker_poll_delay": 0.01,
        "heartbeat_seconds": 0.5,
        "lease_ttl_seconds": 1.5,
        "shutdown_grace_seconds": 2.0,
        "job_type_modules": [TEST_JOB_TYPES],
        "log_level": "INFO",
    }
    base.update(overrides)
    return get_settings(_env_file=None, **base)


@pytest.fixture
def database_url(tmp_path: Path, db_backend: str, request: pytest.FixtureRequest) -> str:
    """A fresh, migrated database per test: a copied SQLite file, or a clone of the PostgreSQL template."""
    if db_backend == "postgres":
        pool: _ClonePool = request.getfixturevalue("postgres_clones")
        return pool.cluster.url(pool.take())
    path = tmp_path / "jobs.sqlite3"
    shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
    return f"sqlite://{path}"


@pytest.fixture
def settings_factory(database_url: str, redis_server: RedisServer) -> Callable[..., Settings]:
    sync_redis.Redis.from_url(redis_server.url).flushdb()

    def factory(**overrides: Any) -> Settings:
        return make_settings(database_url=database_url, redis_url=redis_server.url, **overrides)

    return factory


@pytest.fixture
def settings(settings_factory: Callable[..., Settings]) -> Settings:
    return settings_factory()


@asynccontextmanager
async def running_app(settings: Settings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The real app with its lifespan (tortoise, Redis, embedded worker) and an in-process client."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield app, client


@pytest_asyncio.fixture
async def app_client(settings: Settings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    async with running_app(settings) as pair:
        yield pair


@pytest_asyncio.fixture
async def client(app_client: tuple[FastAPI, httpx.AsyncClient]) -> httpx.AsyncClient:
    return app_client[1]


@pytest_asyncio.fixture
async def runtime(app_client: tuple[FastAPI, httpx.AsyncClient]) -> Runtime:
    rt: Runtime = app_client[0].state.runtime
    return rt


@pytest_asyncio.fixture
async def orm(settings: Settings) -> AsyncIterator[Runtime]:
    """The ORM and Redis without the HTTP app or a worker, for service-level tests."""
    await Tortoise.init(config=db.tortoise_config(settings), _enable_global_fallback=True)
    registry.load([BUILTIN_HANDLERS, *settings.job_type_modules])
    redis = await connect_redis(settings)
    try:
        yield Runtime(settings=settings, redis=redis)
    finally:
        await redis.aclose()
        await Tortoise.close_connections()


def make_token(
    settings: Settings | None = None,
    *,
    sub: str = "5",
    permissions: list[str] | None = None,
    ttl: timedelta = timedelta(minutes=5),
) -> str:
    s = settings or make_settings()
    return issue_token(s, sub=sub, permissions=[ADMIN_PERMISSION] if permissions is None else permissions, ttl=ttl)


@pytest.fixture
def auth(settings: Settings) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token(settings)}"}
