"""strawberry-graphql 0.341.2: where jobs-gateway reaches past strawberry's documented API.

- The websocket protocol handlers. `GraphQLRouter` picks them from two class attributes
  (`graphql_ws_handler_class`, `graphql_transport_ws_handler_class`); ours subclass strawberry's:
  - `LegacyWSHandler` (graphql-ws) closes a refused connection with `REFUSED_CLOSE` where strawberry uses 1011;
  - `TransportWSHandler` (graphql-transport-ws) offers each subscription to the router's `serve_shared` hook
    first (`SharedOperation`: what the hook needs of strawberry's operation, socket and schema), so that identical
    subscriptions can share one stream (app.api.fanout); what the hook declines runs as strawberry runs it.
  Both report each socket's start and end to the router (`socket_opened`, `socket_closed`: caps per address and
  subject), and the legacy handler closes a socket that has not sent `connection_init` within the router's
  `connection_init_wait_timeout`, as strawberry does for graphql-transport-ws only.
- `Router.run`: strawberry raises cross-web's HTTPException for a request it cannot take (a batch, bad JSON).
- `ExecutionResult` and `PreExecutionError`: what `Schema.subscribe` yields, from `strawberry.types.execution`.

Pinned by tests/adapters/test_strawberry_contract.py: the version, the handler methods and attributes used here,
that a completed operation leaves the socket's `operations`, and the close codes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from cross_web import HTTPException
from starlette.responses import JSONResponse
from starlette.websockets import WebSocket
from strawberry.asgi import ASGIWebSocketAdapter
from strawberry.fastapi import GraphQLRouter
from strawberry.schema.base import BaseSchema
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
    Operation,
)
from strawberry.subscriptions.protocols.graphql_ws.handlers import BaseGraphQLWSHandler
from strawberry.subscriptions.protocols.graphql_ws.types import ConnectionInitMessage
from strawberry.types.execution import ExecutionResult, PreExecutionError
from strawberry.types.unset import UNSET

__all__ = [
    "INIT_TIMEOUT_CLOSE",
    "TOO_MANY_CLOSE",
    "ExecutionResult",
    "LegacyWSHandler",
    "PreExecutionError",
    "Router",
    "SharedOperation",
]

# graphql-transport-ws closes a refused connection with 4403 "Forbidden"; the legacy protocol gets the same.
REFUSED_CLOSE = (4403, "Forbidden")
# graphql-transport-ws's close for a socket silent past its initialisation timeout; the legacy protocol gets it too.
INIT_TIMEOUT_CLOSE = (4408, "Connection initialisation timeout")
TOO_MANY_CLOSE = 4429  # graphql-transport-ws's code for too many initialisation requests; here for too many sockets


async def _counted(handler: Any, handle: Any) -> None:
    """Run a protocol handler's `handle` between the router's `socket_opened` and `socket_closed`."""
    router, websocket = handler.view, handler.websocket
    ws = websocket.ws if isinstance(websocket, ASGIWebSocketAdapter) else None
    if not isinstance(router, Router) or ws is None:
        await handle()
        return
    refusal = router.socket_opened(ws)
    if refusal is not None:
        await websocket.close(code=TOO_MANY_CLOSE, reason=refusal)
        return
    try:
        await handle()
    finally:
        router.socket_closed(ws, handler.context)


class LegacyWSHandler(BaseGraphQLWSHandler[Any, None]):
    """The legacy `graphql-ws` protocol, closing a refused connection with 4403 like graphql-transport-ws.

    strawberry sends `connection_error` and then closes with 1011; the close code is the only change.
    """

    async def handle_connection_init(self, message: ConnectionInitMessage) -> None:
        if self.connection_acknowledged:
            # graphql-transport-ws's rule, which strawberry's legacy handler lacks: one initialisation per socket.
            await self.websocket.close(code=TOO_MANY_CLOSE, reason="Too many initialisation requests")
            return
        websocket = self.websocket
        close = websocket.close

        async def forbidden_close(code: int, reason: str) -> None:
            if code == 1011:
                code, reason = REFUSED_CLOSE
            await close(code, reason)

        websocket.close = forbidden_close  # type: ignore[method-assign]
        try:
            await super().handle_connection_init(message)
        finally:
            websocket.close = close  # type: ignore[method-assign]

    async def handle(self) -> None:
        timer = asyncio.create_task(self._close_if_silent())
        try:
            await _counted(self, super().handle)
        finally:
            timer.cancel()

    async def _close_if_silent(self) -> None:
        timeout = getattr(self.view, "connection_init_wait_timeout", None)
        if timeout is None:
            return
        await asyncio.sleep(timeout.total_seconds())
        if not self.connection_acknowledged:
            with contextlib.suppress(Exception):  # the socket may be gone already
                await self.websocket.close(*INIT_TIMEOUT_CLOSE)


@dataclass(eq=False)
class SharedOperation:
    """A graphql-transport-ws subscription, as the router's `serve_shared` hook sees it."""

    id: str
    query: object  # as the client sent them: not validated yet
    variables: object
    operation_name: object
    websocket: WebSocket
    context: Any  # the socket's context (authenticated at connection_init)
    # The socket's live operations by id: this one is current while `operation` is the one under its id
    # (strawberry drops it when the client completes it or the socket closes, and an id can be reused).
    operations: Mapping[str, object]
    operation: object
    _operation: Operation[Any, None]
    _schema: BaseSchema
    _root_value: object

    async def send(self, message: dict[str, object]) -> None:
        """A protocol message on the socket, as strawberry sends its own (`complete`, `error`)."""
        await self._operation.send_operation_message(message)  # type: ignore[arg-type]  # typed as its TypedDicts

    async def subscribe(self, context: object) -> AsyncIterator[object]:
        """Start the subscription in `context`: its results (ExecutionResult or PreExecutionError)."""
        stream: AsyncIterator[object] = await self._schema.subscribe(
            self._operation.query,
            variable_values=self._operation.variables,
            context_value=context,
            root_value=self._root_value,
            operation_name=self._operation.operation_name,
        )
        return stream


class TransportWSHandler(BaseGraphQLTransportWSHandler[Any, None]):
    """graphql-transport-ws; each subscription goes to the router's `serve_shared` first."""

    async def handle(self) -> None:
        await _counted(self, super().handle)

    async def run_operation(self, operation: Operation[Any, None]) -> None:
        router = self.view
        if not isinstance(router, Router) or not isinstance(self.websocket, ASGIWebSocketAdapter):
            await super().run_operation(operation)
            return
        shared = SharedOperation(
            id=operation.id,
            query=operation.query,
            variables=operation.variables,
            operation_name=operation.operation_name,
            websocket=self.websocket.ws,
            context=self.context,
            operations=self.operations,
            operation=operation,
            _operation=operation,
            _schema=self.schema,
            _root_value=self.root_value,
        )
        if not await router.serve_shared(shared):
            await super().run_operation(operation)


class Router(GraphQLRouter[Any, None]):
    """strawberry's FastAPI router with the handlers above, and 400s a GraphQL client can read."""

    graphql_ws_handler_class = LegacyWSHandler
    graphql_transport_ws_handler_class = TransportWSHandler

    async def serve_shared(self, operation: SharedOperation) -> bool:  # noqa: ARG002 - a hook: subclasses serve
        """Serve a subscription and return True once it has ended; False to leave it to strawberry."""
        return False

    def socket_opened(self, websocket: WebSocket) -> str | None:  # noqa: ARG002 - a hook
        """A websocket was accepted: None to serve it, or why it is refused (closed with 4429)."""
        return None

    def socket_closed(self, websocket: WebSocket, context: Any) -> None:
        """A websocket `socket_opened` admitted has ended."""

    async def run(self, request: Any, context: Any = UNSET, root_value: Any = UNSET) -> Any:
        """strawberry answers a request it cannot take (a batch, no query, bad JSON) in plain text;
        GraphQL clients read `errors`, so they get those, coded BAD_USER_INPUT."""
        try:
            return await super().run(request, context=context, root_value=root_value)
        except HTTPException as exc:
            if exc.status_code != 400:
                raise
            error = {"message": exc.reason, "extensions": {"code": "BAD_USER_INPUT"}}
            return JSONResponse({"data": None, "errors": [error]}, status_code=400)

    def decode_json(self, data: str | bytes) -> object:
        """strawberry answers JSONDecodeError with 400 (HTTP) or 4400 (websocket); invalid UTF-8 and
        nesting deeper than the parser's recursion limit raise other errors, which were 500s."""
        try:
            return json.loads(data)
        except (UnicodeDecodeError, RecursionError) as exc:
            raise json.JSONDecodeError(f"not valid JSON ({type(exc).__name__})", "", 0) from exc
