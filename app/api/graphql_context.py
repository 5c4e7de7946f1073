"""The GraphQL request context: runtime, caller and per-request loaders."""

from __future__ import annotations

from typing import Any

import structlog
from strawberry.fastapi import BaseContext

from app.api.auth import ADMIN_PERMISSION, Principal, decode_token, require_permission
from app.api.deps import bearer_token
from app.api.live import Hub
from app.platform.errors import AppError
from app.platform.runtime import Runtime


class Context(BaseContext):
    def __init__(self, runtime: Runtime, hub: Hub, authorization: str | None) -> None:
        super().__init__()
        self.runtime = runtime
        self.hub = hub
        self.authorization = authorization
        self._principal: Principal | None = None
        self.loaders: dict[str, Any] = {}
        # The job the last result of a subscription stream was about: a shared stream bounds a slow
        # socket's backlog per job with it.
        self.stream_job_id: str | None = None

    def for_shared_stream(self) -> Context:
        """A context for one subscription stream shared by many sockets (app.api.fanout).

        Each socket authenticated itself and ends when its own token expires; the data does not depend
        on who asks (every caller holds the admin permission), so the shared stream runs as the service
        and never expires.
        """
        shared = Context(self.runtime, self.hub, None)
        shared._principal = Principal(sub="shared-subscription", permissions=frozenset({ADMIN_PERMISSION}))
        return shared

    def authenticate(self, authorization: str | None) -> Principal:
        """Verify a bearer value (header or websocket init payload) and remember the caller."""
        self._principal = require_permission(decode_token(bearer_token(authorization), self.runtime.settings))
        structlog.contextvars.bind_contextvars(user=self._principal.sub)  # on the request's log lines
        return self._principal

    def admin(self) -> Principal:
        """The caller, who must hold `settings.update`; the same rule as the REST routes."""
        if self._principal is None:
            self.authenticate(self.authorization)
        assert self._principal is not None
        return self._principal

    def auth_error(self) -> AppError | None:
        try:
            self.admin()
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
