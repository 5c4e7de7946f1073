"""Refuse request bodies over MAX_BODY_BYTES with 413, and websocket messages over WS_MAX_MESSAGE_BYTES
with close code 1009, before anything parses them."""

from __future__ import annotations

import json

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTooLarge(HTTPException):
    """An HTTPException so that FastAPI's body parsing lets it through (it turns others into 400)."""

    def __init__(self) -> None:
        super().__init__(413, "Request body is too large")


class BodyLimit:
    """Reads MAX_BODY_BYTES from the running app's settings, which exist only once it has started."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        runtime = getattr(scope["app"].state, "runtime", None) if "app" in scope else None
        if scope["type"] == "websocket" and runtime is not None:
            await _limit_messages(self.app, scope, receive, send, runtime.settings.ws_max_message_bytes)
            return
        if scope["type"] != "http" or runtime is None:
            await self.app(scope, receive, send)
            return
        max_bytes: int = runtime.settings.max_body_bytes
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            await _refuse(send, max_bytes)
            return
        seen = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > max_bytes:
                    raise BodyTooLarge()  # a chunked body that grew past the limit
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyTooLarge:
            if not started:
                await _refuse(send, max_bytes)


async def _refuse(send: Send, max_bytes: int) -> None:
    message = f"Request body is larger than {max_bytes} bytes"
    body = json.dumps({"success": False, "error": "payload_too_large", "message": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})


MESSAGE_TOO_BIG = 1009  # RFC 6455


async def _limit_messages(app: ASGIApp, scope: Scope, receive: Receive, send: Send, max_bytes: int) -> None:
    """Close a websocket whose client sends a message over `max_bytes`; the app sees a disconnect.

    uvicorn's own frame limit (--ws-max-size, 16 MiB by default) is a server option: this one is a
    setting of the app, whichever server runs it."""
    closed = False

    async def limited_receive() -> Message:
        nonlocal closed
        message = await receive()
        if message["type"] == "websocket.receive":
            size = len(message.get("bytes") or b"") + len((message.get("text") or "").encode())
            if size > max_bytes:
                closed = True
                await send({"type": "websocket.close", "code": MESSAGE_TOO_BIG, "reason": "Message too big"})
                return {"type": "websocket.disconnect", "code": MESSAGE_TOO_BIG}
        return message

    async def guarded_send(message: Message) -> None:
        # Shared `jobStatus` frames do not pass here (observability.middleware.server_send): after this close
        # uvicorn refuses them itself, and the fan-out drops that member.
        if not closed:  # the socket is closed already: anything the app still sends goes nowhere
            await send(message)

    await app(scope, limited_receive, guarded_send)
