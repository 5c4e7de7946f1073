"""The service outlives a Redis restart: reads keep working, triggers answer 503, then work again."""

from __future__ import annotations

import asyncio

import pytest

from app.platform.config import Settings
from tests.conftest import make_token, running_app
from tests.factories import make_job, wait_for_logs
from tests.support.servers import RedisServer

pytestmark = pytest.mark.slow


async def test_api_and_embedded_worker_survive_a_redis_restart(settings: Settings) -> None:
    with RedisServer() as redis:
        settings = settings.model_copy(update={"redis_url": redis.url})
        auth = {"Authorization": f"Bearer {make_token(settings)}"}
        async with running_app(settings) as (_, client):
            await make_job(id="steady", payload={"summary": "ok"})
            redis.stop()
            assert (await client.get("/api/jobs/steady", headers=auth)).json()["running"] is False
            down = await client.post("/api/jobs/steady/trigger", headers=auth)
            assert (down.status_code, down.json()["error"]) == (503, "unavailable")
            await asyncio.sleep(3)
            redis.start()
            # The embedded worker waited the outage out (or was replaced): a trigger runs again.
            for _ in range(50):
                response = await client.post("/api/jobs/steady/trigger", headers=auth)
                if response.status_code == 200:
                    break
                await asyncio.sleep(0.2)
            assert response.status_code == 200
            [entry] = await wait_for_logs(client, "steady", auth, timeout=20)
            assert entry["result"] == "success"
