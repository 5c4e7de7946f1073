"""Many `jobStatus` subscribers in their own process, so that the test process stays responsive.

    SUBSCRIBER_TOKEN=... python -m tests.reliability.subscribers --ws URL [--ws URL ...] --jobs a,b,c \
        --count 1000 --seconds 60 --out results.json

Subscriber i watches job i % len(jobs) through API i % len(ws). One more subscriber watches every
job and never reads (a stalled client). Prints `ready` once every subscription has its first state,
records every state it is sent for `--seconds`, then writes the results as JSON and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import socket
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect

QUERY = "subscription S($id: ID) { jobStatus(id: $id) { id running lastRun lastResult } }"
PROTOCOL = "graphql-transport-ws"
BATCH = 50  # connections opened at once


async def _open(url: str, token: str, job_id: str | None, **options: Any) -> ClientConnection:
    ws = await connect(url, subprotocols=[PROTOCOL], ping_interval=None, open_timeout=60, **options)  # type: ignore[list-item]
    await ws.send(json.dumps({"type": "connection_init", "payload": {"token": token}}))
    ack = json.loads(await asyncio.wait_for(ws.recv(), 60))
    if ack["type"] != "connection_ack":
        raise RuntimeError(f"refused: {ack}")
    payload = {"query": QUERY, "variables": {"id": job_id}}
    await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": payload}))
    return ws


class Watcher:
    def __init__(self, index: int, url: str, job_id: str) -> None:
        self.index, self.url, self.job_id = index, url, job_id
        self.states: list[tuple[float, bool, str | None, str | None]] = []
        self.first = asyncio.Event()
        self.closed: int | None = None
        self.ws: ClientConnection | None = None

    async def run(self, token: str) -> None:
        self.ws = await _open(self.url, token, self.job_id)
        try:
            async for raw in self.ws:
                message = json.loads(raw)
                if message["type"] == "next":
                    state = message["payload"]["data"]["jobStatus"]
                    self.states.append((time.time(), state["running"], state["lastRun"], state["lastResult"]))
                    self.first.set()
        finally:
            self.closed = self.ws.close_code

    def result(self) -> dict[str, Any]:
        return {"job": self.job_id, "url": self.url, "states": self.states, "closed": self.closed}


def _tiny_socket(url: str) -> socket.socket:
    parts = urlsplit(url)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((parts.hostname or "127.0.0.1", parts.port or 80))
    sock.setblocking(False)
    return sock


async def _stalled_count(ws: ClientConnection, limit: float = 3.0) -> int:
    """Start reading the stalled socket: what it holds (its backlog) arrives first. Bounded in time,
    since live events keep coming."""
    count = 0
    deadline = time.monotonic() + limit
    with contextlib.suppress(TimeoutError, Exception):
        while (left := deadline - time.monotonic()) > 0:
            await asyncio.wait_for(ws.recv(), min(left, 0.5))
            count += 1
    return count


async def main(args: argparse.Namespace) -> None:
    jobs = args.jobs.split(",")
    token = os.environ["SUBSCRIBER_TOKEN"]  # not on the command line, where `ps` shows it
    watchers = [Watcher(i, args.ws[i % len(args.ws)], jobs[i % len(jobs)]) for i in range(args.count)]
    tasks: list[asyncio.Task[None]] = []
    started = time.time()
    for offset in range(0, len(watchers), BATCH):
        batch = watchers[offset : offset + BATCH]
        tasks += [asyncio.create_task(w.run(token)) for w in batch]
        await asyncio.wait_for(asyncio.gather(*(w.first.wait() for w in batch)), 120)
    # max_queue=1: the client library stops reading after one message; a tiny receive buffer: the
    # server's sends back up after a few kB, not after the megabytes loopback buffers would take.
    stalled = await _open(args.ws[0], token, None, max_queue=1, sock=_tiny_socket(args.ws[0]))
    ready = time.time()
    print(f"ready {len(watchers)} subscribers in {ready - started:.1f} s", flush=True)
    await asyncio.sleep(args.seconds)
    ended = time.time()
    stalled_received = await _stalled_count(stalled)
    await stalled.close()
    for watcher in watchers:
        if watcher.ws is not None:
            await watcher.ws.close()
    await asyncio.gather(*tasks, return_exceptions=True)
    result = {
        "started": started,
        "ready": ready,
        "ended": ended,
        "watchers": [w.result() for w in watchers],
        "stalled": {"received": stalled_received, "closed": stalled.close_code},
    }
    Path(args.out).write_text(json.dumps(result))
    print("done", flush=True)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ws", action="append", required=True)
    parser.add_argument("--jobs", required=True)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--out", required=True)
    return parser.parse_args(argv)


if __name__ == "__main__":
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    asyncio.run(main(parse(sys.argv[1:])))
