"""Per-request context and HTTP metrics, as one outermost ASGI middleware.

Every request gets an id (a sane `X-Request-ID` from the caller, else a new one), echoed in the
response and bound to every log line logged while it is served. Metrics use the matched route's
template (`/api/jobs/{jobId}`), never the raw path, so that ids in URLs cannot multiply the series.

Being outermost, it also hands a websocket's server `send` on, untouched, for the shared subscription
streams (`server_send`).
"""

from __future__ import annotations

import functools
import re
import time
import uuid

import structlog
from prometheus_client import Counter, Histogram
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.platform import metrics, origin

REQUEST_ID_HEADER = "X-Request-ID"
# A caller's id is logged and echoed, so only short, plain tokens are honoured.
_SANE_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
UNMATCHED = "<unmatched>"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_SERVER_SEND = "jobs_gateway.server_send"


def server_send(scope: Scope) -> Send | None:
    """The ASGI server's own `send` for this websocket, below every middleware and Starlette's WebSocket.

    For writing `websocket.send` messages only, once the socket is accepted: a shared `jobStatus` event goes
    to up to thousands of sockets at once, and the layers above (Starlette's state checks, three pass-through
    wrappers) cost a fifth of the server's CPU per socket (B2). What those layers do with a data frame is
    refuse it after a close: Starlette and `body_limit` (after its 1009 close) drop or reject it, and here
    the server itself raises instead (uvicorn: ClientDisconnected, or RuntimeError once it has sent a close),
    which the fan-out takes as a broken member. So a middleware that must see or change every frame cannot
    go inside this one; this one must stay outermost (app.main).
    """
    send: Send | None = scope.get(_SERVER_SEND)
    return send


def request_id_of(scope: Scope) -> str:
    for name, value in scope.get("headers") or []:
        if name == b"x-request-id":
            text: str = value.decode("latin-1")
            if _SANE_ID.fullmatch(text):
                return text
    return uuid.uuid4().hex


def route_template(scope: Scope) -> str:
    route = scope.get("route")
    path: object = getattr(route, "path", None)
    return path if isinstance(path, str) and path else UNMATCHED


class RequestContext:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        request_id = request_id_of(scope)
        tokens = structlog.contextvars.bind_contextvars(request_id=request_id)
        client = scope.get("client")
        entered = origin.enter(origin.Origin(request_id, str(client[0])[:64] if client else None))
        try:
            if scope["type"] == "websocket":
                await self._websocket(scope, receive, send)
            else:
                await self._http(scope, receive, send, request_id)
        finally:
            structlog.contextvars.unbind_contextvars("user")  # bound by the auth dependency, if any
            structlog.contextvars.reset_contextvars(**tokens)
            origin.leave(entered)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[_SERVER_SEND] = send
        accepted = False

        async def counting_send(message: Message) -> None:
            nonlocal accepted
            await send(message)
            if message["type"] == "websocket.accept" and not accepted:
                accepted = True
                metrics.WEBSOCKET_SUBSCRIBERS.inc()

        try:
            await self.app(scope, receive, counting_send)
        finally:
            if accepted:
                metrics.WEBSOCKET_SUBSCRIBERS.dec()

    async def _http(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        status = 500  # what the client sees when the app raises before answering

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            method = scope.get("method", "GET") if scope.get("method") in METHODS else "OTHER"
            count, duration = _series(method, route_template(scope), status)
            count.inc()
            duration.observe(time.perf_counter() - started)


@functools.lru_cache(maxsize=4096)
def _series(method: str, route: str, status: int) -> tuple[Counter, Histogram]:
    """The request's metric children. Their labels are bounded (methods, route templates, statuses),
    and a label lookup costs a lock and a tuple of strings each time: memoised."""
    return (
        metrics.HTTP_REQUESTS.labels(method=method, route=route, status=str(status)),
        metrics.HTTP_DURATION.labels(method=method, route=route),
    )
