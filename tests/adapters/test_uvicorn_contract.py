"""What app/adapters/uvicorn.py relies on in uvicorn 0.54.0 and websockets 17.4, on uvicorn's real protocol:
shared `jobStatus` frames written straight to its transport, and its send stepped without a task."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest
from starlette.types import Receive, Scope, Send
from uvicorn.config import Config
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from websockets.asyncio.client import ClientConnection
from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from app.adapters.uvicorn import send_now, text_frame, wire_writer
from app.api.fanout import Fanout, Member, PreparedFrame, SharedStream
from app.platform.config import Settings
from app.platform.runtime import Runtime
from tests.adapters.pins import check_version
from tests.support.subscriptions import (
    JOB,
    STATUS,
    next_raw,
    served,
    served_by,
    set_running,
    standalone,
    state_of,
    subscriber,
)


@pytest.mark.parametrize(("package", "pinned"), [("uvicorn", "0.54.0"), ("websockets", "17.4")])
def test_the_versions_are_the_ones_the_adapter_was_written_for(package: str, pinned: str) -> None:
    check_version(package, pinned, "app/adapters/uvicorn.py")


async def test_uvicorns_send_takes_one_step_while_the_socket_is_writable_and_waits_when_it_is_not() -> None:
    """send_now writes a frame without a task or a turn of the loop only because uvicorn's send does not wait
    while its transport accepts data; once the transport is paused it waits, and the caller finishes it later."""
    async with _accepted() as (protocol, transport, peer):
        coro = protocol.send({"type": "websocket.send", "text": "now"})
        assert send_now(coro) is None  # written in one step
        assert [bytes(f.data) for f in _received(peer, transport.written)] == [b"now"]
        transport.written.clear()
        protocol.pause_writing()
        later = protocol.send({"type": "websocket.send", "text": "later"})
        waiting_on = send_now(later)
        assert waiting_on is not None and not transport.written  # waits for the transport
        protocol.resume_writing()
        await asyncio.sleep(0)
        assert send_now(later) is None
        assert [bytes(f.data) for f in _received(peer, transport.written)] == [b"later"]


@pytest.mark.parametrize("text", ["", "x" * 125, "x" * 126, "x" * 65_535, "x" * 65_536, "état " * 20_000])
def test_a_prepared_frame_is_byte_for_byte_what_uvicorns_websockets_writes(text: str) -> None:
    conn = ServerProtocol(state=State.OPEN)  # how uvicorn's send frames a text message
    conn.send_text(text.encode())
    assert text_frame(text) == b"".join(conn.data_to_send())


def _shared(fanout: Fanout) -> SharedStream:
    (shared,) = fanout.streams.values()
    return shared


class _Transport(asyncio.Transport):
    """A transport that keeps what uvicorn writes, so that its protocol can be driven step by step."""

    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.closing = False
        self.fails = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.fails:
            raise RuntimeError("the transport broke")
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:  # noqa: ARG002 - no socket to describe
        return default


Accepted = tuple[WebSocketsSansIOProtocol, _Transport, ClientProtocol]


@asynccontextmanager
async def _accepted(*, deflate: bool = False) -> AsyncIterator[Accepted]:
    """uvicorn's websocket protocol after the handshake, with the peer's side of the connection."""
    accepted, finish = asyncio.Event(), asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        accepted.set()
        await finish.wait()

    config = Config(app=app, ws_per_message_deflate=deflate, log_config=None, log_level="warning")
    config.load()
    state = ServerState()
    protocol, transport = WebSocketsSansIOProtocol(config, state, {}), _Transport()
    protocol.connection_made(transport)
    peer = ClientProtocol(parse_uri("ws://127.0.0.1/graphql"), extensions=[ClientPerMessageDeflateFactory()])
    peer.send_request(peer.connect())
    protocol.data_received(b"".join(peer.data_to_send()))
    await asyncio.wait_for(accepted.wait(), 5)
    peer.receive_data(transport.written.pop())  # the 101 response
    assert peer.state is State.OPEN and bool(peer.extensions) is deflate
    try:
        yield protocol, transport, peer
    finally:
        finish.set()
        await asyncio.gather(*state.tasks)


def _recording_send(sent: list[str]) -> Callable[[str], Coroutine[Any, Any, None]]:
    """A member's ASGI send that only keeps what it was given."""

    async def send(frame: str) -> None:
        sent.append(frame)

    return send


def _received(peer: ClientProtocol, data: list[bytes]) -> list[Frame]:
    peer.receive_data(b"".join(data))
    return [e for e in peer.events_received() if isinstance(e, Frame)]


async def test_a_direct_write_is_what_uvicorns_send_writes_and_the_peer_reads() -> None:
    async with _accepted() as (protocol, transport, peer):
        write = wire_writer(protocol.send)
        assert write is not None
        await protocol.send({"type": "websocket.send", "text": '{"état":1}'})
        assert write(text_frame('{"état":1}')) is True
        sent, direct = transport.written
        assert direct == sent
        frames = _received(peer, transport.written)
        assert [(f.opcode, bytes(f.data)) for f in frames] == [(Opcode.TEXT, '{"état":1}'.encode())] * 2


async def test_a_member_offers_through_its_direct_writer_first() -> None:
    """Member.offer (a late joiner's latest state takes it), as well as the stream's loop."""
    sent: list[str] = []
    async with _accepted() as (protocol, transport, peer):
        member = standalone("1", _recording_send(sent))
        member.write_wire = wire_writer(protocol.send)
        member.offer(JOB, PreparedFrame.of('{"n":1}'))
        protocol.pause_writing()
        member.offer(JOB, PreparedFrame.of('{"n":2}'))
        assert [bytes(f.data) for f in _received(peer, transport.written)] == [b'{"n":1}']
        assert sent == ['{"n":2}']  # the writer declined: the ASGI send took it


async def test_no_writer_without_uvicorns_protocol_or_with_compression() -> None:
    async def other_send(message: Any) -> None:
        pass

    assert wire_writer(None) is None
    assert wire_writer(other_send) is None
    async with _accepted(deflate=True) as (protocol, _, _peer):
        assert wire_writer(protocol.send) is None  # every socket compresses with its own context
    async with _accepted() as (protocol, _, _peer):
        del protocol.close_sent  # a uvicorn without the state this reads: no writer rather than a guess
        assert wire_writer(protocol.send) is None


async def _app_closed(protocol: WebSocketsSansIOProtocol, peer: ClientProtocol) -> None:
    await protocol.send({"type": "websocket.close", "code": 1000})


async def _server_shut_down(protocol: WebSocketsSansIOProtocol, peer: ClientProtocol) -> None:
    protocol.shutdown()


async def _peer_closed(protocol: WebSocketsSansIOProtocol, peer: ClientProtocol) -> None:
    peer.send_close(1000)
    protocol.data_received(b"".join(peer.data_to_send()))


async def _connection_lost(protocol: WebSocketsSansIOProtocol, peer: ClientProtocol) -> None:
    protocol.connection_lost(ConnectionResetError())  # uvicorn leaves closing the transport to asyncio here


async def _transport_paused(protocol: WebSocketsSansIOProtocol, peer: ClientProtocol) -> None:
    protocol.pause_writing()


@pytest.mark.parametrize("event", [_app_closed, _server_shut_down, _peer_closed, _connection_lost, _transport_paused])
async def test_the_writer_declines_once_the_socket_is_closing_or_paused(
    event: Callable[[WebSocketsSansIOProtocol, ClientProtocol], Coroutine[Any, Any, None]],
) -> None:
    async with _accepted() as (protocol, transport, peer):
        write = wire_writer(protocol.send)
        assert write is not None and write(text_frame("before")) is True
        await event(protocol, peer)
        written = len(transport.written)
        assert write(text_frame("after")) is False
        assert len(transport.written) == written  # nothing after the close, or past the high-water mark
        if event is _transport_paused:
            protocol.resume_writing()
            assert write(text_frame("after")) is True
        else:
            assert not any(f.opcode is Opcode.TEXT and f.data == b"after" for f in _received(peer, transport.written))


async def test_a_transport_that_raises_leaves_the_frame_to_the_asgi_send() -> None:
    async with _accepted() as (protocol, transport, _peer):
        write = wire_writer(protocol.send)
        assert write is not None
        transport.fails = True
        assert write(text_frame("x")) is False
        assert transport.written == []

        sent: list[str] = []
        member = standalone("1", _recording_send(sent))
        member.write_wire = write
        member.offer(JOB, PreparedFrame.of("x"))
        assert sent == ["x"]


async def test_frames_go_to_the_transport_unless_the_socket_compresses(settings: Settings) -> None:
    async with served(settings) as (app, url), AsyncExitStack() as stack:
        rt: Runtime = app.state.runtime
        await asyncio.wait_for(app.state.hub.connected.wait(), 5)
        plain = [
            await stack.enter_async_context(await subscriber(url, settings, STATUS, {"id": JOB}, compression=None))
            for _ in range(3)
        ]
        deflating = await stack.enter_async_context(await subscriber(url, settings, STATUS, {"id": JOB}))
        sockets = [*plain, deflating]
        assert len({await next_raw(ws) for ws in sockets}) == 1  # the first state, the same for all

        shared = _shared(app.state.fanout)
        written: dict[int, list[bool]] = {}
        sent: dict[int, list[str]] = {}
        for number, member in enumerate(shared.members):
            _record(member, number, written, sent)
        direct = [n for n, m in enumerate(shared.members) if m.write_wire is not None]
        assert len(direct) == 3  # the sockets that did not negotiate permessage-deflate

        for running in (True, False, True):
            await set_running(rt, running)
            assert [state_of(await next_raw(ws))["running"] for ws in sockets] == [running] * 4
        for n in range(4):
            if n in direct:  # three frames written to the transport, none through the ASGI send
                assert (written[n], sent[n]) == ([True] * 3, [])
            else:  # per-socket compression: uvicorn's send, three times
                assert (n not in written, len(sent[n])) == (True, 3)
        await set_running(rt, False)


def _record(member: Member, number: int, written: dict[int, list[bool]], sent: dict[int, list[str]]) -> None:
    send, write = member.send, member.write_wire
    sent[number] = []

    def recording_send(frame: str) -> Coroutine[Any, Any, None]:
        sent[number].append(frame)
        return send(frame)

    member.send = recording_send
    if write is not None:
        written[number] = []

        def recording_write(frame: bytes) -> bool:
            written[number].append(write(frame))
            return written[number][-1]

        member.write_wire = recording_write


async def test_a_paused_transport_takes_the_asgi_send_and_gets_every_change_in_order(settings: Settings) -> None:
    async with served_by(settings) as (app, url, server), AsyncExitStack() as stack:
        rt: Runtime = app.state.runtime
        await asyncio.wait_for(app.state.hub.connected.wait(), 5)
        ws = await stack.enter_async_context(await subscriber(url, settings, STATUS, {"id": JOB}, compression=None))
        assert state_of(await next_raw(ws))["running"] is False
        shared = _shared(app.state.fanout)
        (member,) = shared.members
        assert member.write_wire is not None
        (protocol,) = [c for c in server.server_state.connections if isinstance(c, WebSocketsSansIOProtocol)]

        protocol.pause_writing()  # what the transport does past its high-water mark
        for running in (True, False, True):
            executions = shared.executions
            await set_running(rt, running)
            async with asyncio.timeout(5):
                while shared.executions == executions:  # noqa: ASYNC110 - nothing to wait on
                    await asyncio.sleep(0.01)
        assert member.writer is not None and member.backlog  # the first frame waits in the send, two behind it
        await _nothing_arrives(ws)

        protocol.resume_writing()
        # Writable again, but the writer has not caught up yet: a new change must queue behind it, not jump
        # the queue through the transport.
        assert shared.latest is not None and '"running":true' in shared.latest
        shared._deliver(JOB, shared.latest.replace('"running":true', '"running":false'))
        assert [state_of(await next_raw(ws))["running"] for _ in range(4)] == [True, False, True, False]
        await asyncio.wait_for(member.flushed(), 5)

        written: dict[int, list[bool]] = {}
        sent: dict[int, list[str]] = {}
        _record(member, 0, written, sent)
        for running in (False, True, False):  # and the next changes go straight to the transport again
            await set_running(rt, running)
            assert state_of(await next_raw(ws))["running"] is running
        assert (written[0], sent[0], member.writer) == ([True] * 3, [], None)


async def _nothing_arrives(ws: ClientConnection) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(ws.recv(), 0.3)


def test_the_header_timeout_protocol_overrides_what_uvicorns_httptools_protocol_calls() -> None:
    """HeaderTimeoutProtocol arms its timer where uvicorn's httptools protocol starts a connection and a request,
    and disarms it where the headers are complete or the connection is lost: those methods must still be there,
    and uvicorn must still choose that protocol for `http="auto"` (the default this replaces)."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    from app.adapters.uvicorn import HeaderTimeoutProtocol

    assert AutoHTTPProtocol is HttpToolsProtocol
    for name in ("connection_made", "on_message_begin", "on_headers_complete", "connection_lost"):
        assert name in vars(HttpToolsProtocol), name
        assert getattr(HeaderTimeoutProtocol, name) is not getattr(HttpToolsProtocol, name), name
    assert HeaderTimeoutProtocol.with_timeout(3.0).header_timeout == 3.0
