"""The GraphQL API's plumbing: its limits, error handling and the FastAPI router (the schema itself is merged from
the domains' types by the entry point, app.main)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import time
from collections.abc import Coroutine, Iterator
from typing import Any, ClassVar

from cross_web import HTTPException
from graphql import GraphQLError
from graphql.validation import NoSchemaIntrospectionCustomRule
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse
from starlette.types import Send
from starlette.websockets import WebSocket, WebSocketState
from strawberry import Schema
from strawberry.asgi import ASGIWebSocketAdapter
from strawberry.exceptions import ConnectionRejectionError
from strawberry.extensions import MaxAliasesLimiter, MaxTokensLimiter, QueryDepthLimiter, SchemaExtension
from strawberry.fastapi import GraphQLRouter
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
    Operation,
)
from strawberry.subscriptions.protocols.graphql_ws.handlers import BaseGraphQLWSHandler
from strawberry.subscriptions.protocols.graphql_ws.types import ConnectionInitMessage
from strawberry.types.unset import UNSET, UnsetType

from app.adapters.uvicorn import wire_writer
from app.api.fanout import Fanout, Member, Sender, share_key
from app.api.graphql_context import Context, connection_token
from app.api.graphql_errors import AppErrors, is_unexpected
from app.api.middleware import server_send
from app.platform.errors import AppError

MAX_DEPTH = 10
MAX_ALIASES = 15
MAX_TOKENS = 2_000
# 4403 is the code graphql-transport-ws uses for "Forbidden"; an expired token ends the socket with it.
EXPIRED_CLOSE_CODE = 4403


class RequestLimits(SchemaExtension):
    """Refuse oversized documents before parsing, and introspection when the settings turn it off."""

    def on_operation(self) -> Iterator[None]:
        context = self.execution_context
        settings = context.context.runtime.settings
        query = context.query or ""
        if len(query.encode()) > settings.graphql_max_query_bytes:
            raise GraphQLError(
                f"Query is larger than {settings.graphql_max_query_bytes} bytes",
                extensions={"code": "BAD_USER_INPUT"},
            )
        if not settings.graphql_introspection:
            context.validation_rules = (*context.validation_rules, NoSchemaIntrospectionCustomRule)
        yield


class JobsSchema(Schema):
    def process_errors(self, errors: list[GraphQLError], execution_context: object = None) -> None:
        # Expected errors (bad input, auth, not found, conflicts) are answers, not incidents: log the rest.
        for error in errors:
            if is_unexpected(error):
                super().process_errors([error], execution_context)  # type: ignore[arg-type]


def build_schema(query: type, mutation: type, subscription: type) -> JobsSchema:
    """The schema of these root types, with the API's limits and error handling."""
    return JobsSchema(
        query=query,
        mutation=mutation,
        subscription=subscription,
        extensions=[
            RequestLimits,
            # Token counting happens in the parser, before validation; depth and aliases are validation rules.
            lambda: MaxTokensLimiter(max_token_count=MAX_TOKENS),
            lambda: QueryDepthLimiter(max_depth=MAX_DEPTH),
            lambda: MaxAliasesLimiter(max_alias_count=MAX_ALIASES),
            AppErrors,
        ],
    )


async def get_context(connection: HTTPConnection) -> Context:
    state = connection.app.state
    return Context(state.runtime, state.hub, connection.headers.get("authorization"))


class LegacyWSHandler(BaseGraphQLWSHandler[Context, None]):
    """The legacy `graphql-ws` protocol, closing a refused connection with 4403 like graphql-transport-ws.

    strawberry sends `connection_error` and then closes with 1011; the close code is the only change.
    """

    async def handle_connection_init(self, message: ConnectionInitMessage) -> None:
        websocket = self.websocket
        close = websocket.close

        async def forbidden_close(code: int, reason: str) -> None:
            await close(EXPIRED_CLOSE_CODE if code == 1011 else code, "Forbidden" if code == 1011 else reason)

        websocket.close = forbidden_close  # type: ignore[method-assign]
        try:
            await super().handle_connection_init(message)
        finally:
            websocket.close = close  # type: ignore[method-assign]


class TransportWSHandler(BaseGraphQLTransportWSHandler[Context, None]):
    """graphql-transport-ws, where identical `jobStatus` subscriptions share one stream (app.api.fanout).

    Everything else — queries, other subscriptions, validation, protocol errors — is strawberry's own.
    """

    async def run_operation(self, operation: Operation[Context, None]) -> None:
        key = share_key(operation.query, operation.variables, operation.operation_name)
        fanout: Fanout | None = getattr(self.view, "fanout", None)
        if key is None or fanout is None or not isinstance(self.websocket, ASGIWebSocketAdapter):
            await super().run_operation(operation)
            return
        server = server_send(self.websocket.ws.scope)
        member = Member(
            operation_id=operation.id,
            send=_frame_sender(self.websocket.ws, server),
            write_wire=wire_writer(server),
            expires_at=self.context.admin().expires_at,
            operations=self.operations,
            operation=operation,
        )
        shared = self.context.for_shared_stream()

        async def open_stream() -> Any:
            return await self.schema.subscribe(
                operation.query,
                variable_values=operation.variables,
                context_value=shared,
                root_value=self.root_value,
                operation_name=operation.operation_name,
            )

        stream = fanout.join(key, member, open_stream, lambda: shared.stream_job_id)
        try:
            end = await member.ended
            await member.flushed()  # the last states before the end message
            await operation.send_operation_message(
                {"id": operation.id, "type": "complete"} if end is None else {"id": operation.id, **end}  # type: ignore[typeddict-item]
            )
        finally:
            stream.leave(member)


def _frame_sender(websocket: WebSocket, send: Send | None) -> Sender:
    """How a shared stream writes a text frame to this socket: with the server's own `send` when it can."""
    if send is None or not inspect.iscoroutinefunction(send):  # the stream steps coroutines (_send_now)
        return websocket.send_text

    def send_text(frame: str) -> Coroutine[Any, Any, None]:
        # The server's coroutine itself, not one wrapping it: a frame costs one coroutine, not two.
        return send({"type": "websocket.send", "text": frame})

    return send_text


class Router(GraphQLRouter[Context, None]):
    """Websockets authenticate in `connection_init` (or the upgrade header) and end when the token does."""

    graphql_ws_handler_class = LegacyWSHandler
    graphql_transport_ws_handler_class = TransportWSHandler
    fanout: Fanout
    _expiries: ClassVar[set[asyncio.Task[None]]] = set()

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

    async def on_ws_connect(self, context: Context) -> UnsetType | None | dict[str, object]:
        header = context.request.headers.get("authorization") if context.request is not None else None
        try:
            principal = context.authenticate(connection_token(context.connection_params, header))
        except AppError as exc:
            raise ConnectionRejectionError({"reason": exc.message}) from exc
        if isinstance(context.request, WebSocket):
            task = asyncio.create_task(_close_at(context.request, principal.expires_at))
            self._expiries.add(task)
            task.add_done_callback(self._expiries.discard)
        return None


async def _close_at(websocket: WebSocket, expires_at: float) -> None:
    # Wakes at least every few seconds, so that a socket closed long before its token expires does
    # not leave a sleeping task behind for the rest of the token's life.
    while (remaining := expires_at - time.time()) > 0:
        if WebSocketState.DISCONNECTED in (websocket.client_state, websocket.application_state):
            return
        await asyncio.sleep(min(remaining, 5.0))
    with contextlib.suppress(Exception):  # the socket may be gone already
        await websocket.close(EXPIRED_CLOSE_CODE, "Token expired")


def router(schema: Schema) -> Router:
    graphql_router = Router(schema, context_getter=get_context, graphql_ide="graphiql")
    graphql_router.fanout = Fanout()
    return graphql_router
