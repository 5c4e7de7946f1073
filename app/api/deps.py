"""FastAPI dependencies shared by every REST route."""

from __future__ import annotations

import functools
from typing import Annotated, Any

import structlog
from fastapi import Depends, Request, Security
from fastapi.security import HTTPBearer

from app.api.auth import Principal, decode_token
from app.platform import permissions
from app.platform.errors import Unauthenticated
from app.platform.runtime import Runtime


async def get_runtime(request: Request) -> Runtime:
    # async: FastAPI runs a plain `def` dependency in its thread pool, a thread hop on every request.
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def bearer_token(authorization: str | None) -> str:
    """The token of an `Authorization: Bearer <token>` value; Unauthenticated for anything else."""
    if not authorization:
        raise Unauthenticated("Authorization header with a Bearer token is required", code="missing_token")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise Unauthenticated("Authorization must use the Bearer scheme", code="invalid_token")
    if not token.strip():
        raise Unauthenticated("The Bearer token is empty", code="invalid_token")
    return token.strip()


# Only for OpenAPI: it gives /docs its "Authorize" button. The header is parsed below, with our messages.
_bearer_scheme = HTTPBearer(
    auto_error=False,
    description="A JWT whose `permissions` allow the operation: jobs.read, jobs.trigger, jobs.write, or "
    "settings.update (every one)",
)


async def current_user(
    request: Request, runtime: RuntimeDep, _: Annotated[object, Security(_bearer_scheme)] = None
) -> Principal:
    """The caller of a verified bearer token (what it may do: `may`)."""
    # async: it runs in the request's own context (not a thread), so the user bound here is on every
    # line logged for the request; verifying an HS256 token takes a fraction of a millisecond.
    principal = decode_token(bearer_token(request.headers.get("authorization")), runtime.settings)
    structlog.contextvars.bind_contextvars(user=principal.sub)
    return principal


UserDep = Annotated[Principal, Depends(current_user)]


@functools.cache
def may(operation: str) -> Any:
    """`Annotated[Principal, may("triggerJob")]`: a route's caller, if the permission table
    (app.platform.permissions) lets them do `operation`, the GraphQL root field the route is the twin of."""

    async def check(user: UserDep) -> Principal:
        permissions.check(user.permissions, operation)
        return user

    check.__name__ = f"may_{operation}"
    return Depends(check)
