"""B2's baseline servers, each fed by one Redis subscription like jobs-gateway's Hub.

    python -m bench.fanout_baselines websockets PORT REDIS_URL   # bare `websockets` broadcast()
    python -m bench.fanout_baselines strawberry PORT REDIS_URL   # plain strawberry, one queue per subscriber

The strawberry baseline is the textbook subscription: FastAPI + strawberry's GraphQLRouter under uvicorn
(as jobs-gateway runs), an async generator per subscriber reading its own asyncio.Queue, a Job type with
the same fields. It builds each state from the event itself (no database read), so it does less per
event than jobs-gateway does.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import strawberry
import uvicorn
import uvloop
from fastapi import FastAPI
from redis.asyncio import Redis
from strawberry.fastapi import GraphQLRouter
from websockets.asyncio.server import ServerConnection, broadcast, serve

from bench.fanout_clients import BASELINE_CHANNEL

READY = "baseline listening"  # printed once the server accepts connections (bench.b2_fanout waits for it)


async def listen(redis_url: str, on_message: Any) -> None:
    redis = Redis.from_url(redis_url)
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    try:
        await pubsub.subscribe(BASELINE_CHANNEL)
        while True:
            message = await pubsub.get_message(timeout=1.0)
            if message is not None:
                on_message(message["data"])
    finally:
        await pubsub.aclose()
        await redis.aclose()


async def websockets_server(port: int, redis_url: str) -> None:
    clients: set[ServerConnection] = set()

    async def handler(ws: ServerConnection) -> None:
        clients.add(ws)
        try:
            await ws.wait_closed()
        finally:
            clients.discard(ws)

    async with serve(handler, "127.0.0.1", port, ping_interval=None):
        print(READY, flush=True)
        await listen(redis_url, lambda data: broadcast(clients, data.decode()))


@strawberry.type
class Job:
    id: strawberry.ID
    name: str
    enabled: bool
    running: bool
    last_run: str | None = None
    last_result: str | None = None
    next_run: str | None = None


queues: set[asyncio.Queue[dict[str, Any]]] = set()


@strawberry.type
class Query:
    @strawberry.field
    def ok(self) -> bool:
        return True


@strawberry.type
class Subscription:
    @strawberry.subscription
    async def job_status(self, id: strawberry.ID | None = None) -> AsyncGenerator[Job, None]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        queues.add(queue)
        try:
            yield Job(id=strawberry.ID(id or "bench-fanout"), name="Fan-out", enabled=True, running=False)
            while True:
                state = await queue.get()
                yield Job(**state)
        finally:
            queues.discard(queue)


def strawberry_app(redis_url: str) -> FastAPI:
    def on_message(data: bytes) -> None:
        state = json.loads(data)
        for queue in queues:
            queue.put_nowait(state)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(listen(redis_url, on_message))
        yield
        task.cancel()

    app = FastAPI(lifespan=lifespan)
    app.include_router(GraphQLRouter(strawberry.Schema(query=Query, subscription=Subscription)), prefix="/graphql")
    return app


class _ListeningServer(uvicorn.Server):
    """Says when it listens: uvicorn's lifespan start-up ends before its socket is bound."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        print(READY, flush=True)


def main() -> None:
    kind, port, redis_url = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    if kind == "websockets":
        uvloop.run(websockets_server(port, redis_url))
    else:
        uvicorn_config = uvicorn.Config(strawberry_app(redis_url), host="127.0.0.1", port=port, log_level="warning")
        _ListeningServer(uvicorn_config).run()


if __name__ == "__main__":
    main()
