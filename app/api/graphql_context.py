"""The GraphQL request context: runtime, caller and per-request loaders."""

from __future__ import annotations

from typing import Any

import structlog
from strawberry.fastapi import BaseContext

from app import engine
from app.api.auth import ADMIN_PERMISSION, Principal, decode_token
from app.api.deps import bearer_token
from app.api.graphql_errors import to_graphql
from app.api.live import Hub
from app.platform import permissions
from app.platform.errors import AppError
from app.platform.runtime import Runtime


class Context(BaseContext):
    def __init__(
        self, runtime: Runtime, hub: Hub, authorization: str | None, log_feed: engine.LogFeed | None = None
    ) -> None:
        super().__init__()
        self.runtime = runtime
        self.hub = hub
        self.log_feed = log_feed  # run log lines as they are written (`runLog`)
        self.authorization = authorization
        self._principal: Principal | None = None
        self.loaders: dict[str, Any] = {}
        # The job the last result of a subscription stream was about: a shared stream bounds a slow
        # socket's backlog per job with it.
        self.stream_job_id: str | None = None
        # The subject this socket counts against (WS_MAX_SOCKETS_PER_SUBJECT), once admitted.
        self.counted_subject: str | None = None

    def for_shared_stream(self) -> Context:
        """A context for one subscription stream shared by many sockets (app.api.fanout).

        Each socket authenticated itself and ends when its own token expires; the data does not depend
        on who asks (every socket that joins one may watch jobs: jobs.read, checked as it joins), so the shared
        stream runs as the service and never expires.
        """
        shared = Context(self.runtime, self.hub, None, self.log_feed)
        shared._principal = Principal(sub="shared-subscription", permissions=frozenset({ADMIN_PERMISSION}))
        return shared

    def authenticate(self, authorization: str | None, *, connection: bool = False) -> Principal:
        """Verify a bearer value (header or websocket init payload) and remember the caller; each operation then
        checks its own permission. A websocket `connection` is refused to a caller who holds none of them."""
        principal = decode_token(bearer_token(authorization), self.runtime.settings)
        if connection and not principal.permissions & set(permissions.GRANTED):
            permissions.check(principal.permissions, "jobStatus")  # names what the least of them would be
        self._principal = principal
        structlog.contextvars.bind_contextvars(user=principal.sub)  # on the request's log lines
        return principal

    def user(self) -> Principal:
        """The authenticated caller (what they may do: `require`)."""
        if self._principal is None:
            self.authenticate(self.authorization)
        assert self._principal is not None
        return self._principal

    def require(self, operation: str) -> Principal:
        """The caller, if the permission table lets them do `operation` (a root field's name); the same table
        as the REST routes'."""
        principal = self.user()
        permissions.check(principal.permissions, operation)
        return principal

    def subscriber(self, operation: str) -> Principal:
        """`require` for a subscription's source stream, which the AppErrors extension does not see: its refusal
        comes coded (FORBIDDEN) all the same."""
        try:
            return self.require(operation)
        except AppError as exc:
            raise to_graphql(exc) from exc

    def auth_error(self, operation: str) -> AppError | None:
        try:
            self.require(operation)
        except AppError as exc:
            return exc
        return None


def connection_token(payload: object, header: str | None) -> str | None:
    """The bearer value of a websocket: `connection_init` payload first, then the upgrade header."""
    if isinstance(payload, dict):
        if isinstance(payload.get("authorization"), str):
            return str(payload["authorization"])
        if isinstance(payload.get("Authorization"), str):
            return str(payload["Authorization"])
        if isinstance(payload.get("token"), str):
            return f"Bearer {payload['token']}"
    return header
