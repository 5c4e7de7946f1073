"""Shared `jobStatus` frames written straight to uvicorn's transport (app.websocket_wire), on the real server."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from contextlib import AsyncExitStack
from typing import Any

import pytest
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.asyncio.client import ClientConnection
from websockets.protocol import State
from websockets.server import ServerProtocol

from app.config import Settings
from app.graphql_fanout import Fanout, Member, SharedStream
from app.runtime import Runtime
from app.websocket_wire import text_frame
from tests.support.subscriptions import JOB, STATUS, next_raw, served, served_by, set_running, state_of, subscriber


@pytest.mark.parametrize("text", ["", "x" * 125, "x" * 126, "x" * 65_535, "x" * 65_536, "état " * 20_000])
def test_a_prepared_frame_is_byte_for_byte_what_uvicorns_websockets_writes(text: str) -> None:
    conn = ServerProtocol(state=State.OPEN)  # how uvicorn's send frames a text message
    conn.send_text(text.encode())
    assert text_frame(text) == b"".join(conn.data_to_send())


async def _shared(fanout: Fanout) -> SharedStream:
    (shared,) = fanout.streams.values()
    return shared


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

        shared = await _shared(app.state.fanout)
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
        (member,) = (await _shared(app.state.fanout)).members
        assert member.write_wire is not None
        (protocol,) = [c for c in server.server_state.connections if isinstance(c, WebSocketsSansIOProtocol)]

        shared = await _shared(app.state.fanout)
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
        assert [state_of(await next_raw(ws))["running"] for _ in range(3)] == [True, False, True]
        await asyncio.wait_for(member.flushed(), 5)
        await set_running(rt, False)  # and the next change goes straight to the transport again
        assert state_of(await next_raw(ws))["running"] is False
        await set_running(rt, True)
        assert state_of(await next_raw(ws))["running"] is True
        assert member.writer is None
        await set_running(rt, False)


async def _nothing_arrives(ws: ClientConnection) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(ws.recv(), 0.3)
