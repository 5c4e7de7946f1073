"""The throwaway servers really start, serve clients, restart on the same port and release it on stop."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import asyncpg
import pytest
import redis

from tests.support.servers import (
    PostgresCluster,
    RedisServer,
    ServerError,
    free_port,
    port_is_free,
    postgres_unavailable_reason,
)

_PG_MISSING = postgres_unavailable_reason()
needs_postgres = pytest.mark.skipif(_PG_MISSING is not None, reason=_PG_MISSING or "")
# The helpers start their own servers whatever --backend says: a second pass would repeat the same tests.
pytestmark = pytest.mark.sqlite_only


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_redis_starts_serves_and_releases_its_port() -> None:
    with RedisServer() as server:
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        client = redis.Redis.from_url(server.url)
        try:
            assert client.ping() is True
            client.set("k", "v")
            assert client.get("k") == b"v"
        finally:
            client.close()
        workdir = server.workdir
        server.stop()
        assert not server.running
        assert port_is_free(server.port)
    assert not workdir.exists()


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_redis_comes_back_on_the_same_port(how: str) -> None:
    with RedisServer() as server:
        port, first_pid = server.port, server.pid
        client = redis.Redis.from_url(server.url, socket_timeout=2)
        try:
            client.set("before", "1")
            if how == "stop":
                server.stop()
            else:
                server.kill()
            assert port_is_free(port)
            with pytest.raises(redis.ConnectionError):
                client.ping()

            server.start()
            assert server.port == port
            assert server.pid != first_pid
            # Persistence is off, so the restarted server is empty, but the same client object works again.
            assert client.get("before") is None
            client.set("after", "2")
            assert client.get("after") == b"2"
        finally:
            client.close()


def test_redis_failure_reports_the_log() -> None:
    with RedisServer() as running:
        clash = RedisServer(port=running.port)
        try:
            with pytest.raises(ServerError, match="Address already in use"):
                clash.start()
        finally:
            clash.close()
        assert running.ping()


@pytest.fixture(scope="module")
def cluster() -> Iterator[PostgresCluster]:
    with PostgresCluster() as pg:
        yield pg


@needs_postgres
async def test_postgres_serves_a_created_database(cluster: PostgresCluster) -> None:
    url = cluster.create_database("servers_test")
    assert url == f"postgres://postgres@127.0.0.1:{cluster.port}/servers_test"
    conn = await asyncpg.connect(url)
    try:
        assert await conn.fetchval("select 1") == 1
        assert await conn.fetchval("select current_database()") == "servers_test"
        assert await conn.fetchval("show fsync") == "off"
    finally:
        await conn.close()
    assert cluster.psql("select 1", dbname="servers_test") == "1"


@needs_postgres
def test_postgres_runs_unprivileged(cluster: PostgresCluster) -> None:
    pid = cluster.pid
    assert pid is not None
    assert os.stat(f"/proc/{pid}").st_uid != 0


@needs_postgres
def test_postgres_stop_releases_port_and_removes_files() -> None:
    with PostgresCluster() as pg:
        assert pg.psql("select 1") == "1"
        workdir, port = pg.workdir, pg.port
        pg.stop()
        assert not pg.running
        assert port_is_free(port)
        pg.start()
        assert pg.port == port
        assert pg.psql("select 2") == "2"
    assert not workdir.exists()
    assert port_is_free(port)
