"""B2's client process: N websocket clients on one event loop, and the state changes they time.

Run by bench/b2_fanout.py as a separate process, so that the server under test has its own process:

    python -m bench.fanout_clients --url ws://127.0.0.1:PORT/graphql --kind gateway --n 1000 ...

It connects N clients (graphql-transport-ws with `connection_init` and a `jobStatus` subscription, or
bare websockets), prints `READY <frame bytes>` once each has its first state, then, for every `GO <rounds>`
line on stdin, makes <rounds> state changes and prints one JSON line: per round, the time from the change
to its arrival at the LAST client and at the median client (ms). `QUIT` ends it.

The clients are a small asyncio protocol, not the `websockets` library: decoding 1,000 frames with a
full client library costs the client process tens of milliseconds per round, which is the client's time,
not the server's. The server under test is always a real, unmodified websocket server.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import secrets
import statistics
import struct
import sys
import time
from typing import Any

import uvloop
from redis.asyncio import Redis

from app.engine import events, leases

BASELINE_CHANNEL = "bench:fanout"
STATUS = "subscription S($id: ID) { jobStatus(id: $id) { id name enabled running lastRun lastResult nextRun } }"
TRUE, FALSE = b'"running":true', b'"running":false'


def _frame(text: str, opcode: int = 0x1) -> bytes:
    """A client frame: masked (with a zero key, so the payload bytes are unchanged)."""
    payload = text.encode()
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    else:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    return header + b"\0\0\0\0" + payload


def _parse(buf: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """The complete server frames (unmasked) at the start of buf, and the incomplete rest."""
    frames: list[tuple[int, bytes]] = []
    pos = 0
    while len(buf) - pos >= 2:
        n = buf[pos + 1] & 0x7F
        start = pos + 2
        if n == 126:
            if len(buf) - pos < 4:
                break
            n, start = struct.unpack_from("!H", buf, pos + 2)[0], pos + 4
        elif n == 127:
            if len(buf) - pos < 10:
                break
            n, start = struct.unpack_from("!Q", buf, pos + 2)[0], pos + 10
        if len(buf) < start + n:
            break
        frames.append((buf[pos] & 0x0F, buf[start : start + n]))
        pos = start + n
    return frames, buf[pos:]


class Client(asyncio.Protocol):
    def __init__(self, run: Run) -> None:
        self.run = run
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.handshaken = False
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.first: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.acked: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio.Transport

    def connection_lost(self, exc: Exception | None) -> None:  # noqa: ARG002 - the protocol's signature
        self.closed = True
        for fut in (self.opened, self.first, self.acked):
            if not fut.done():
                fut.set_exception(ConnectionError("closed"))

    def send(self, text: str) -> None:
        assert self.transport is not None
        self.transport.write(_frame(text))

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        buf = self.buffer + data
        if not self.handshaken:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buffer = buf
                return
            if b" 101 " not in buf[: buf.find(b"\r\n")]:
                self.opened.set_exception(ConnectionError(buf[:200].decode(errors="replace")))
                return
            self.handshaken = True
            self.opened.set_result(None)
            buf = buf[end + 4 :]
        frames, self.buffer = _parse(buf)
        for opcode, payload in frames:
            if opcode == 0x9:  # ping → pong
                assert self.transport is not None
                self.transport.write(struct.pack("!BB", 0x8A, 0x80 | len(payload)) + b"\0\0\0\0" + payload)
            elif opcode == 0x1:
                self.on_text(payload, now)

    def on_text(self, payload: bytes, now: float) -> None:
        if not self.acked.done():
            if b"connection_ack" in payload:
                self.acked.set_result(None)
                return
        if not self.first.done():
            self.first.set_result(payload)
            return
        self.run.arrived(self, payload, now)


class Run:
    def __init__(self, n: int) -> None:
        self.n = n
        self.expect = TRUE
        self.times: dict[Client, float] = {}
        self.done: asyncio.Event = asyncio.Event()

    def start(self, expect: bytes) -> None:
        self.expect = expect
        self.times = {}
        self.done.clear()

    def arrived(self, client: Client, payload: bytes, now: float) -> None:
        if self.expect in payload and client not in self.times:
            self.times[client] = now
            if len(self.times) == self.n:
                self.done.set()


async def open_client(run: Run, host: str, port: int, path: str, kind: str, token: str) -> Client:
    loop = asyncio.get_running_loop()
    _, client = await loop.create_connection(lambda: Client(run), host, port)
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Protocol: graphql-transport-ws\r\n\r\n"
    )
    assert client.transport is not None
    client.transport.write(request.encode())
    await asyncio.wait_for(client.opened, 30)
    if kind == "raw":
        client.acked.set_result(None)
        client.first.set_result(b"")
        return client
    client.send(json.dumps({"type": "connection_init", "payload": {"token": token}}))
    await asyncio.wait_for(client.acked, 30)
    message = {"id": "1", "type": "subscribe", "payload": {"query": STATUS, "variables": {"id": run_job}}}
    client.send(json.dumps(message))
    await asyncio.wait_for(client.first, 30)
    return client


run_job = "bench-fanout"


async def change(redis: Redis, kind: str, running: bool, size: int) -> None:
    """One state change, as the engine makes it (gateway) or as the baselines receive it."""
    if kind == "gateway":
        # What a worker does when a run starts and ends: hold or drop the lease, then publish the event.
        if running:
            await leases.acquire(redis, run_job, secrets.token_hex(8), 60)
            await events.publish(redis, "run.started", run_job, running=True)
        else:
            await redis.delete(leases.key(run_job))
            await events.publish(redis, "run.finished", run_job, running=False)
        return
    state = {"id": run_job, "name": "Fan-out", "enabled": True, "running": running}
    text = json.dumps(state, separators=(",", ":"))
    if kind == "raw":  # a message of the same size as the gateway's frame
        text = text[:-1] + ',"pad":"' + "x" * max(0, size - len(text) - 9) + '"}'
    await redis.publish(BASELINE_CHANNEL, text)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--kind", choices=["gateway", "strawberry", "raw"], required=True)
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--redis", required=True)
    parser.add_argument("--token", default="")
    parser.add_argument("--size", type=int, default=200)
    parser.add_argument("--gap", type=float, default=0.05)
    args = parser.parse_args()
    rest = args.url.split("://", 1)[1]
    hostport, _, path = rest.partition("/")
    host, _, port = hostport.partition(":")
    run = Run(args.n)
    redis = Redis.from_url(args.redis)
    clients: list[Client] = []
    try:
        if args.kind == "gateway":
            await redis.delete(leases.key(run_job))
        for i in range(0, args.n, 50):  # in batches: a burst of 1,000 handshakes overflows the listen backlog
            batch = [
                open_client(run, host, int(port), "/" + path, args.kind, args.token) for _ in range(min(50, args.n - i))
            ]
            clients += await asyncio.gather(*batch)
        frame_bytes = len(clients[0].first.result())
        print(f"READY {frame_bytes}", flush=True)
        reader = asyncio.StreamReader()
        await asyncio.get_running_loop().connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        running = False
        while True:
            line = (await reader.readline()).decode().split()
            if not line or line[0] == "QUIT":
                return
            rounds = int(line[1])
            last: list[float] = []
            median: list[float] = []
            sizes: set[int] = set()
            for _ in range(rounds):
                running = not running
                run.start(TRUE if running else FALSE)
                t0 = time.perf_counter()
                await change(redis, args.kind, running, args.size)
                await asyncio.wait_for(run.done.wait(), 60)
                arrivals = sorted(run.times.values())
                last.append((arrivals[-1] - t0) * 1000)
                median.append((statistics.median(arrivals) - t0) * 1000)
                sizes.add(len(clients))
                await asyncio.sleep(args.gap)
            if any(c.closed for c in clients):
                raise ConnectionError("a client was disconnected during the rounds")
            result: dict[str, Any] = {"last": last, "median": median}
            print(json.dumps(result), flush=True)
    finally:
        for c in clients:
            if c.transport is not None:
                c.transport.close()
        if args.kind == "gateway":
            await redis.delete(leases.key(run_job))
        await redis.aclose()


if __name__ == "__main__":
    uvloop.run(main())
