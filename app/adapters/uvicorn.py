"""uvicorn 0.54.0 and websockets 17.4: one prepared websocket frame written to many uvicorn sockets, a
`transport.write` per socket (`wire_writer`), a send stepped without a task while it does not wait
(`send_now`), and uvicorn's HTTP protocol with a timeout on a request's headers (`HeaderTimeoutProtocol`).
Pinned by tests/adapters/test_uvicorn_contract.py.

A shared `jobStatus` event goes to up to thousands of sockets with the same bytes (app.api.fanout).
Through the ASGI `send`, each socket costs a message dict (app.api.graphql) and, in uvicorn, an Event wait,
encoding the text, websockets building and serialising the frame and joining its output, before the one
call that matters, `transport.write`: more than half of the API's CPU per event at 1,000 subscribers (B2,
bench/NOTES.md). Here the frame is serialised once per event, and each socket only gets the write.

This reaches into uvicorn's own websocket protocol, so it is used only where the result is byte for
byte what uvicorn would have written, as far as the protocol's class and state tell:
- the server's `send` is a method of uvicorn's `WebSocketsSansIOProtocol` (its default `--ws`); any
  other server or implementation gets no writer, and the fan-out uses the ASGI `send`;
- the socket negotiated no extension: with permessage-deflate every socket compresses with its own
  context, so there is no shared frame (`jobs-gateway run` serves without it: README, *Scaling out*);
- at each frame, uvicorn has sent no close, the peer is connected, the transport is not closing (uvicorn
  closes it when a close arrives) and accepts data. Otherwise the writer declines and the caller uses
  the ASGI `send`, which waits for a paused transport or raises on a closed socket exactly as before.

What keeps those checks meaning what they say is the pins on uvicorn and websockets (pyproject.toml,
requirements.lock) and tests/adapters/test_uvicorn_contract.py, which checks all this on uvicorn's real
protocol: an upgrade that renames or removes what this reads gets no writer, and the fan-out falls back to
the ASGI send (slower, not wrong); one that keeps the names but changes what they mean is caught by those
tests, which an upgrade must pass.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from starlette.types import Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Frame, Opcode

WireWriter = Callable[[bytes], bool]

# What the writer reads on uvicorn's protocol, checked once per socket so that a uvicorn without any one of
# them gets the ASGI send rather than an AttributeError on every frame.
_PROTOCOL_STATE = (
    "close_sent",
    "disconnected",
    "writable",
    "transport",
    "conn",
    "handshake_complete",
    "initial_response",
)


def text_frame(text: str) -> bytes:
    """A complete, unmasked server text frame: what uvicorn's `send` writes for `{"text": text}`."""
    return Frame(Opcode.TEXT, text.encode()).serialize(mask=False)


def wire_writer(send: Send | None) -> WireWriter | None:
    """A function writing a prepared frame to this socket's transport, or None when that is not safe.

    The function returns False, having written nothing, whenever the ASGI `send` must decide instead:
    when a check fails, or when anything raises (an asyncio transport takes a whole frame into its buffer
    or raises before taking any of it).
    """
    protocol = _uvicorn_protocol(send)
    if protocol is None or getattr(protocol.conn, "extensions", True):
        return None
    transport = protocol.transport
    writable = protocol.writable

    def write(frame: bytes) -> bool:
        try:
            # Once the connection leaves OPEN uvicorn has sent a close (close_sent) or closed the transport;
            # `disconnected` covers a connection lost with an error, whose transport asyncio closes later.
            if protocol.close_sent or protocol.disconnected or transport.is_closing() or not writable.is_set():
                return False
            transport.write(frame)
        except Exception:  # anything unexpected: let the ASGI send decide, as it would have without us
            return False
        return True

    return write


def _uvicorn_protocol(send: Send | None) -> WebSocketsSansIOProtocol | None:
    protocol = getattr(send, "__self__", None)
    if type(protocol) is not WebSocketsSansIOProtocol:
        return None
    if getattr(send, "__func__", None) is not WebSocketsSansIOProtocol.send:
        return None
    if not all(hasattr(protocol, name) for name in _PROTOCOL_STATE):
        return None
    if not protocol.handshake_complete or protocol.initial_response is not None:
        return None
    return protocol


def send_now(coro: Coroutine[Any, Any, None]) -> object | None:
    """Run a send until it would wait. Returns what it waits on, or None when the frame is written.

    uvicorn's websocket send is synchronous while the transport accepts data (it only waits when its write buffer
    is over the high-water mark), so stepping the coroutine here writes to a healthy socket with no task, no queue
    and no event-loop round trip. Exceptions (a closed socket) propagate. Another server's send that does wait
    is still correct, only slower: the caller finishes it in a task.
    """
    try:
        waiting_on = coro.send(None)
    except StopIteration:
        return None
    return waiting_on if waiting_on is not None else YIELDED


YIELDED = object()  # the coroutine yielded to the loop without a future (asyncio.sleep(0))


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """uvicorn's HTTP protocol (httptools, its `auto` choice here), closing a connection whose request headers have
    not arrived whole `header_timeout` seconds after the connection opened or the request's first byte: uvicorn
    times out an idle keep-alive connection but not a request trickling in one byte at a time, which holds a
    connection (and a `limit_concurrency` place) for as long as the client likes. `with_timeout` makes the class
    `jobs-gateway serve` hands uvicorn as its `http` protocol."""

    header_timeout: float = 10.0
    _header_timer: asyncio.TimerHandle | None = None

    @classmethod
    def with_timeout(cls, seconds: float) -> type[HeaderTimeoutProtocol]:
        return type("HeaderTimeoutProtocol", (cls,), {"header_timeout": seconds})

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._headers_late)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.close()
