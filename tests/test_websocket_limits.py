"""What a websocket client may cost an API instance, before and after it authenticates: the frame size refused
before it is read, a silent socket closed on time, sockets capped per address and per subject, operations per
socket, one initialisation per socket. Against `jobs-gateway serve`, as production runs an instance."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from app.platform.config import Settings
from app.platform.runtime import Runtime
from tests.conftest import make_token
from tests.support.processes import ApiProcess
from tests.support.servers import free_port

pytestmark = [pytest.mark.slow, pytest.mark.sqlite_only]  # the server's limits: no database work to repeat
TRANSPORT, LEGACY = "graphql-transport-ws", "graphql-ws"
STATUS = 'subscription { jobStatus(id: "metadata-sync") { id running } }'


@pytest.fixture
def api_factory(settings_factory: Callable[..., Settings], tmp_path: Path, orm: Runtime) -> Iterator[Any]:
    started: list[ApiProcess] = []

    def start(**overrides: Any) -> tuple[ApiProcess, Settings]:
        settings = settings_factory(**overrides)
        api = ApiProcess(settings, tmp_path, free_port(), name=f"api-{len(started)}")
        api.start()
        started.append(api)
        return api, settings

    yield start
    for api in started:
        api.stop()


def ws_url(api: ApiProcess) -> str:
    return api.url.replace("http://", "ws://") + "/graphql"


async def opened(api: ApiProcess, token: str | None, protocol: str = TRANSPORT) -> ClientConnection:
    """A socket, initialised with `token` (None: not initialised)."""
    ws = await connect(ws_url(api), subprotocols=[protocol])  # type: ignore[list-item]
    if token is not None:
        await ws.send(json.dumps({"type": "connection_init", "payload": {"token": token}}))
    return ws


async def first_message(ws: ClientConnection) -> dict[str, Any] | tuple[int | None, str]:
    """The next message, or (close code, reason) when the server closed the socket instead."""
    try:
        message: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 5))
    except ConnectionClosed as exc:
        return (exc.rcvd.code if exc.rcvd else None, exc.rcvd.reason if exc.rcvd else "")
    return message


def acked(message: object) -> bool:
    return isinstance(message, dict) and message.get("type") == "connection_ack"


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {size} bytes")
        data += chunk
    return data


def test_an_oversized_frame_is_refused_before_it_is_read(api_factory: Any) -> None:
    """A frame announcing 15 MiB, of which 1 KiB is sent: the server answers 1009 at once, without waiting for (and
    buffering) the rest. Before any authentication: the socket has sent nothing else."""
    api, settings = api_factory()
    port = int(api.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(
            (
                "GET /graphql HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                f"Sec-WebSocket-Protocol: {TRANSPORT}\r\n\r\n"
            ).encode()
        )
        response = b""
        while b"\r\n\r\n" not in response:
            response += sock.recv(4096)
        assert response.startswith(b"HTTP/1.1 101"), response
        announced = 15 * 1024 * 1024
        assert announced > settings.ws_max_message_bytes
        mask = os.urandom(4)
        sock.sendall(bytes([0x81, 0x80 | 127]) + struct.pack("!Q", announced) + mask + b"x" * 1024)
        header = _recv_exactly(sock, 2)
        assert header[0] == 0x88, header  # a close frame, the 1 KiB sent being all the server has seen
        code = struct.unpack("!H", _recv_exactly(sock, header[1] & 0x7F)[:2])[0]
        assert code == 1009


@pytest.mark.parametrize("protocol", [TRANSPORT, LEGACY])
async def test_a_socket_that_never_initialises_is_closed_on_time(api_factory: Any, protocol: str) -> None:
    api, settings = api_factory()  # the default: WS_INIT_TIMEOUT_SECONDS=5
    assert settings.ws_init_timeout_seconds == 5
    started = time.monotonic()
    async with await opened(api, None, protocol) as ws:
        try:
            await asyncio.wait_for(ws.recv(), 15)
        except ConnectionClosed as exc:
            assert exc.rcvd is not None and exc.rcvd.code == 4408
    assert 4.5 <= time.monotonic() - started <= 8


async def test_sockets_are_capped_per_address_and_per_subject(api_factory: Any) -> None:
    api, settings = api_factory(ws_max_sockets_per_address=3, ws_max_sockets_per_subject=2)
    alice, bob = make_token(settings, sub="alice"), make_token(settings, sub="bob")
    first, second = await opened(api, alice), await opened(api, alice)
    for ws in (first, second):
        assert acked(await first_message(ws))
    third = await opened(api, alice)
    assert (await first_message(third)) == (4403, "Forbidden")  # graphql-transport-ws says no more than that
    await third.close()
    legacy = await opened(api, alice, LEGACY)  # the legacy protocol's connection_error says why
    assert (await first_message(legacy)) == {
        "type": "connection_error",
        "payload": {"reason": "Too many websockets for this subject (WS_MAX_SOCKETS_PER_SUBJECT=2)"},
    }
    await legacy.close()
    # Another subject from the same address is admitted, up to the address's cap.
    other = await opened(api, bob)
    assert acked(await first_message(other))
    over = await opened(api, None)  # refused as it is accepted, before any authentication
    assert (await first_message(over))[0] == 4429  # type: ignore[index]
    # Closed sockets free their places.
    await first.close()
    await asyncio.sleep(0.3)
    again = await opened(api, alice)
    assert acked(await first_message(again))
    for ws in (second, other, again):
        await ws.close()


async def test_operations_are_capped_per_socket_and_initialisation_happens_once(api_factory: Any) -> None:
    api, settings = api_factory(ws_max_operations_per_socket=2)
    token = make_token(settings)
    async with await opened(api, token) as ws:
        assert acked(await first_message(ws))
        for n in ("1", "2", "3"):
            await ws.send(json.dumps({"id": n, "type": "subscribe", "payload": {"query": STATUS}}))
        answers = [await first_message(ws) for _ in range(3)]
        refusals = [a for a in answers if isinstance(a, dict) and a["type"] == "error"]
        assert [r["id"] for r in refusals] == ["3"], answers
        assert refusals[0]["payload"][0]["message"] == "Subscription limit reached"
    for protocol in (TRANSPORT, LEGACY):
        async with await opened(api, token, protocol) as ws:
            assert acked(await first_message(ws))
            await ws.send(json.dumps({"type": "connection_init", "payload": {"token": token}}))
            assert (await first_message(ws)) == (4429, "Too many initialisation requests"), protocol


async def test_connections_past_the_servers_concurrency_get_503(api_factory: Any) -> None:
    api, settings = api_factory(http_max_concurrency=10)
    token = make_token(settings)
    held = [await opened(api, token) for _ in range(10)]
    try:
        for ws in held:
            assert acked(await first_message(ws))
        async with api.client() as client:
            assert (await client.get("/healthz")).status_code == 503
        for ws in held[:3]:
            await ws.close()
        await asyncio.sleep(0.3)
        async with api.client() as client:
            assert (await client.get("/healthz")).status_code == 200
    finally:
        for ws in held:
            await ws.close()


def test_a_request_whose_headers_trickle_in_is_closed_after_the_header_timeout(api_factory: Any) -> None:
    api, settings = api_factory()  # the default: HTTP_HEADER_TIMEOUT_SECONDS=10
    assert settings.http_header_timeout_seconds == 10
    port = int(api.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the blank line
        for _ in range(3):
            time.sleep(2)
            sock.sendall(b"X-Slow: 1\r\n")  # a byte now and then keeps no connection open
        assert sock.recv(1024) == b""  # closed by the server, no answer
        assert 9 <= time.monotonic() - started <= 13
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:  # a whole request is answered
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        assert sock.recv(1024).startswith(b"HTTP/1.1 200")
