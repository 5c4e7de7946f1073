"""A Redis that requires a password (AUTH): REDIS_URL carries it, and every connection of the API, its worker, its
live hub and its run-log feed uses it."""

from __future__ import annotations

import socket
from collections.abc import Callable

import pytest
from redis.exceptions import AuthenticationError

from app.platform.config import Settings
from app.platform.redis_pool import connect_redis, redis_settings, tls_options, worker_redis_settings
from tests.conftest import make_token, running_app
from tests.factories import make_job, wait_for_logs
from tests.support.servers import RedisServer

pytestmark = pytest.mark.sqlite_only  # Redis only
PASSWORD = "redis-pass-0123456789"


def require_password(port: int, password: str) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        command = f"*4\r\n$6\r\nCONFIG\r\n$3\r\nSET\r\n$11\r\nrequirepass\r\n${len(password)}\r\n{password}\r\n"
        sock.sendall(command.encode())
        assert sock.recv(64).startswith(b"+OK")


async def test_the_service_runs_against_a_redis_that_requires_a_password(
    settings_factory: Callable[..., Settings],
) -> None:
    with RedisServer() as server:
        require_password(server.port, PASSWORD)
        settings = settings_factory().model_copy(update={"redis_url": f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0"})
        auth = {"Authorization": f"Bearer {make_token(settings)}"}
        async with running_app(settings) as (app, client):
            await make_job(id="guarded", payload={"seconds": 0, "summary": "through AUTH"})
            assert (await client.post("/api/jobs/guarded/trigger", headers=auth)).status_code == 200
            [run] = await wait_for_logs(client, "guarded", auth)
            assert (run["result"], run["details"]) == ("success", "through AUTH")
            assert app.state.log_feed.connected.is_set() and app.state.hub.connected.is_set()
            ready = await client.get("/readyz")
            assert ready.status_code == 200, ready.text
        without = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{server.port}/0"})
        with pytest.raises(AuthenticationError):
            await connect_redis(without)


def test_a_tls_url_checks_the_servers_name(settings: Settings) -> None:
    """rediss://: the certificate must name the host; redis-py and arq only check the CA unless told."""
    tls = settings.model_copy(update={"redis_url": "rediss://:pw@redis.internal:6380/0"})
    for built in (redis_settings(tls), worker_redis_settings(tls)):
        assert (built.ssl, built.ssl_check_hostname, built.host, built.password) == (True, True, "redis.internal", "pw")
    assert tls_options(tls.redis_url) == {"ssl_check_hostname": True}
    assert tls_options("redis://127.0.0.1:6379/0") == {}
