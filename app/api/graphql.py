"""The GraphQL API's plumbing: its limits, error handling and the FastAPI router (the schema itself is merged from
the domains' types by the entry point, app.main)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections import Counter
from collections.abc import Coroutine, Iterator
from datetime import timedelta
from typing import Any, ClassVar

from graphql import GraphQLError
from graphql.validation import NoSchemaIntrospectionCustomRule
from starlette.requests import HTTPConnection, Request
from starlette.responses import HTMLResponse
from starlette.types import Send
from starlette.websockets import WebSocket, WebSocketState
from strawberry import Schema
from strawberry.exceptions import ConnectionRejectionError
from strawberry.extensions import MaxAliasesLimiter, MaxTokensLimiter, QueryDepthLimiter, SchemaExtension

from app.adapters.strawberry import REFUSED_CLOSE, SharedOperation
from app.adapters.strawberry import Router as StrawberryRouter
from app.adapters.uvicorn import wire_writer
from app.api.fanout import Fanout, Member, Sender, share_key
from app.api.graphql_context import Context, connection_token
from app.api.graphql_cost import CostLimit
from app.api.graphql_errors import AppErrors, is_unexpected
from app.api.middleware import server_send
from app.platform import permissions
from app.platform.config import Settings
from app.platform.errors import AppError, NotFound

MAX_DEPTH = 10
MAX_ALIASES = 15
MAX_TOKENS = 2_000
# An expired token ends the socket with graphql-transport-ws's "Forbidden", as a refused one.
EXPIRED_CLOSE_CODE = REFUSED_CLOSE[0]


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
        if not settings.introspection_on:
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
            CostLimit,
            AppErrors,
        ],
    )


async def get_context(connection: HTTPConnection) -> Context:
    state = connection.app.state
    return Context(state.runtime, state.hub, connection.headers.get("authorization"), state.log_feed)


def _frame_sender(websocket: WebSocket, send: Send | None) -> Sender:
    """How a shared stream writes a text frame to this socket: with the server's own `send` when it can."""
    # The stream steps the send's coroutine itself (app.adapters.uvicorn.send_now): it must be a coroutine function.
    if send is None or not inspect.iscoroutinefunction(send):
        return websocket.send_text

    def send_text(frame: str) -> Coroutine[Any, Any, None]:
        # The server's coroutine itself, not one wrapping it: a frame costs one coroutine, not two.
        return send({"type": "websocket.send", "text": frame})

    return send_text


class Router(StrawberryRouter):
    """Websockets authenticate in `connection_init` (or the upgrade header) and end when the token does; identical
    `jobStatus` subscriptions over graphql-transport-ws share one stream (app.api.fanout)."""

    fanout: Fanout
    _expiries: ClassVar[set[asyncio.Task[None]]] = set()
    # Open websockets of this process, by client address and by token subject (the caps of app.platform.config).
    by_address: Counter[str]
    by_subject: Counter[str]

    def configure(self, settings: Settings) -> None:
        """The websocket limits of the settings, read at start-up (after the router is built)."""
        self.settings = settings
        self.connection_init_wait_timeout = timedelta(seconds=settings.ws_init_timeout_seconds)
        self.max_subscriptions_per_connection = settings.ws_max_operations_per_socket

    def socket_opened(self, websocket: WebSocket) -> str | None:
        address = websocket.client.host if websocket.client is not None else "unknown"
        cap = self.settings.ws_max_sockets_per_address
        if self.by_address[address] >= cap:
            return f"Too many websockets from this address (WS_MAX_SOCKETS_PER_ADDRESS={cap})"
        self.by_address[address] += 1
        websocket.state.counted_address = address
        return None

    def socket_closed(self, websocket: WebSocket, context: Any) -> None:
        address = getattr(websocket.state, "counted_address", None)
        if address is not None:
            _release(self.by_address, address)
        subject = getattr(context, "counted_subject", None)
        if subject is not None:
            _release(self.by_subject, subject)

    async def serve_shared(self, operation: SharedOperation) -> bool:
        key = share_key(operation.query, operation.variables, operation.operation_name)
        if key is None or not permissions.allows(operation.context.user().permissions, "jobStatus"):
            # Strawberry runs it, as every query and every other subscription (and refuses a caller the
            # permission table does not let watch jobs).
            return False
        server = server_send(operation.websocket.scope)
        member = Member(
            operation_id=operation.id,
            send=_frame_sender(operation.websocket, server),
            write_wire=wire_writer(server),
            expires_at=operation.context.user().expires_at,
            operations=operation.operations,
            operation=operation.operation,
        )
        shared = operation.context.for_shared_stream()
        stream = self.fanout.join(key, member, lambda: operation.subscribe(shared), lambda: shared.stream_job_id)
        try:
            end = await member.ended
            await member.flushed()  # the last states before the end message
            await operation.send(
                {"id": operation.id, "type": "complete"} if end is None else {"id": operation.id, **end}
            )
        finally:
            stream.leave(member)
        return True

    async def render_graphql_ide(self, request: Request) -> HTMLResponse:
        # GraphiQL is an API explorer: off in production unless API_DOCS says otherwise (the settings are read at
        # start-up, after the router is built).
        if not request.app.state.runtime.settings.api_docs_on:
            raise NotFound("GraphiQL is off (API_DOCS; off by default in production)")
        return await super().render_graphql_ide(request)

    async def on_ws_connect(self, context: Context) -> None:
        header = context.request.headers.get("authorization") if context.request is not None else None
        try:
            principal = context.authenticate(connection_token(context.connection_params, header), connection=True)
        except AppError as exc:
            raise ConnectionRejectionError({"reason": exc.message}) from exc
        cap = self.settings.ws_max_sockets_per_subject
        if self.by_subject[principal.sub] >= cap:
            raise ConnectionRejectionError(
                {"reason": f"Too many websockets for this subject (WS_MAX_SOCKETS_PER_SUBJECT={cap})"}
            )
        self.by_subject[principal.sub] += 1
        context.counted_subject = principal.sub
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


def _release(counts: Counter[str], key: str) -> None:
    counts[key] -= 1
    if counts[key] <= 0:
        del counts[key]


def router(schema: Schema) -> Router:
    graphql_router = Router(schema, context_getter=get_context, graphql_ide="graphiql")
    graphql_router.fanout = Fanout()
    graphql_router.by_address, graphql_router.by_subject = Counter(), Counter()
    return graphql_router
