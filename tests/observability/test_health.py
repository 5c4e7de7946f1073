"""/healthz and /readyz: unauthenticated, bounded, and honest about which dependency fails."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx
import pytest
from fastapi import FastAPI
from tortoise.transactions import in_transaction

from app.platform.config import Settings
from tests.conftest import make_settings, running_app
from tests.support.servers import RedisServer


async def test_healthz_answers_without_credentials(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


async def test_readyz_checks_the_database_redis_and_the_embedded_worker(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "checks": {"database": "ok", "redis": "ok", "worker": "ok"}}


async def test_readyz_without_an_embedded_worker_does_not_check_one(settings_factory: Callable[..., Settings]) -> None:
    settings = settings_factory(embedded_worker=False)
    async with running_app(settings) as (_, client):
        response = await client.get("/readyz")
    assert response.json()["checks"] == {"database": "ok", "redis": "ok"}


async def test_readyz_flips_to_503_while_redis_is_down_and_back_when_it_returns(database_url: str) -> None:
    with RedisServer() as redis_server:  # our own: the session's Redis must stay up for other tests
        settings = make_settings(database_url=database_url, redis_url=redis_server.url)
        async with running_app(settings) as (_, client):
            assert (await client.get("/readyz")).status_code == 200
            redis_server.stop()
            started = time.monotonic()
            response = await client.get("/readyz")
            took = time.monotonic() - started
            print(f"/readyz with Redis down answered in {took * 1000:.0f} ms")
            assert response.status_code == 503
            body = response.json()
            assert body["checks"]["redis"] != "ok" and body["checks"]["database"] == "ok"
            assert (body["success"], body["error"], body["status"]) == (False, "not_ready", "unavailable")
            assert "redis" in body["message"]
            assert took < 5.0  # bounded by READINESS_TIMEOUT_SECONDS (1 s), with room for a loaded machine
            redis_server.start()
            deadline = time.monotonic() + 20
            while (response := await client.get("/readyz")).status_code != 200:
                assert time.monotonic() < deadline, response.json()
                await asyncio.sleep(0.2)
            assert response.json()["checks"]["redis"] == "ok"


async def test_readyz_names_an_embedded_worker_that_stopped(app_client: tuple[FastAPI, httpx.AsyncClient]) -> None:
    app, client = app_client
    await app.state.engine.stop(0)
    response = await client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"] == {"database": "ok", "redis": "ok", "worker": "failing"}
    assert response.json()["message"] == "Not ready: worker"


@pytest.mark.sqlite_only  # PostgreSQL's pool hands readiness its own connection: nothing is wedged there
async def test_readyz_fails_while_the_sqlite_connection_that_writes_is_held(client: httpx.AsyncClient) -> None:
    held = asyncio.Event()

    async def hold_the_writer() -> None:
        async with in_transaction("default"):
            held.set()
            await asyncio.sleep(3)

    holder = asyncio.create_task(hold_the_writer())
    await held.wait()
    try:
        response = await client.get("/readyz")
        assert response.status_code == 503
        assert response.json()["checks"]["database"] == "timeout"
    finally:
        await holder
    assert (await client.get("/readyz")).status_code == 200
