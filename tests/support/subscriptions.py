"""The real app under a real uvicorn server in the test's process, and graphql-transport-ws subscribers to it."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

import uvicorn
from fastapi import FastAPI
from websockets.asyncio.client import ClientConnection, connect

from app.api.fanout import Member, Sender
from app.engine import events, leases
from app.main import create_app
from app.platform.config import Settings
from app.platform.runtime import Runtime
from tests.conftest import make_token
from tests.support.servers import free_port

STATUS = "subscription S($id: ID) { jobStatus(id: $id) { id running lastResult enabled } }"
JOB = "metadata-sync"


@asynccontextmanager
async def served_by(settings: Settings) -> AsyncIterator[tuple[FastAPI, str, uvicorn.Server]]:
    """The app, its GraphQL websocket URL and the uvicorn server serving it (whose sockets a test may reach)."""
    app = create_app(settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(20):
            while not server.started:  # noqa: ASYNC110 - uvicorn offers no event for it
                await asyncio.sleep(0.02)
        yield app, f"ws://127.0.0.1:{port}/graphql", server
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 20)


@asynccontextmanager
async def served(settings: Settings) -> AsyncIterator[tuple[FastAPI, str]]:
    """The real app under a real uvicorn server in this process, so that its state can be inspected."""
    async with served_by(settings) as (app, url, _):
        yield app, url


async def subscriber(
    url: str,
    settings: Settings,
    query: str,
    variables: dict[str, Any],
    protocol: str = "graphql-transport-ws",
    compression: Literal["deflate"] | None = "deflate",  # what the websockets client (and a browser) offers
) -> ClientConnection:
    ws = await connect(url, subprotocols=[protocol], compression=compression)  # type: ignore[list-item]
    await ws.send(json.dumps({"type": "connection_init", "payload": {"token": make_token(settings)}}))
    assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "connection_ack"
    start = "subscribe" if protocol == "graphql-transport-ws" else "start"  # graphql-ws: the legacy protocol
    await ws.send(json.dumps({"id": "1", "type": start, "payload": {"query": query, "variables": variables}}))
    return ws


def standalone(operation_id: str, send: Sender, expires_at: float = float("inf"), current: bool = True) -> Member:
    """A member outside any socket handler: current (or not) in an operations map of its own."""
    operation = object()
    operations = {operation_id: operation} if current else {}
    return Member(operation_id, send, expires_at=expires_at, operations=operations, operation=operation)


async def next_raw(ws: ClientConnection) -> str:
    raw = await asyncio.wait_for(ws.recv(), 5)
    assert isinstance(raw, str)
    return raw


def state_of(raw: str) -> dict[str, Any]:
    message = json.loads(raw)
    assert message["type"] in {"next", "data"}, message
    state: dict[str, Any] = message["payload"]["data"]["jobStatus"]
    return state


async def set_running(rt: Runtime, running: bool, job: str = JOB) -> None:
    """What a worker does when a run starts or ends: hold or drop the lease, then publish."""
    if running:
        assert await leases.acquire(rt.redis, job, secrets.token_hex(8), 30)
        await events.publish(rt.redis, "run.started", job, running=True)
    else:
        await rt.redis.delete(leases.key(job))
        await events.publish(rt.redis, "run.finished", job, running=False)
