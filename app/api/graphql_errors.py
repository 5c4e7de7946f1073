"""The GraphQL translation of the error vocabulary into `extensions.code`, in one place."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator
from inspect import isawaitable
from typing import Any

from graphql import GraphQLError
from strawberry.extensions import SchemaExtension

from app.api.outages import as_unavailable
from app.platform.errors import (
    AppError,
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    PreconditionFailed,
    Unauthenticated,
    Unavailable,
    Unprocessable,
)

log = logging.getLogger(__name__)

CODES: list[tuple[type[AppError], str]] = [
    (Unauthenticated, "UNAUTHENTICATED"),
    (Forbidden, "FORBIDDEN"),
    (NotFound, "NOT_FOUND"),
    (Invalid, "BAD_USER_INPUT"),
    (Conflict, "CONFLICT"),
    (PreconditionFailed, "PRECONDITION_FAILED"),
    (Unprocessable, "BAD_USER_INPUT"),
    (Unavailable, "UNAVAILABLE"),
]
INTERNAL_MESSAGE = "Internal server error"


def code_of(error: AppError) -> str:
    return next((code for kind, code in CODES if isinstance(error, kind)), "INTERNAL")


def to_graphql(error: AppError) -> GraphQLError:
    extensions: dict[str, Any] = {"code": code_of(error), "error": error.code}
    if error.details is not None:
        extensions["details"] = error.details
    return GraphQLError(error.message, extensions=extensions, original_error=error)


class AppErrors(SchemaExtension):
    """Each root field requires the permission the table gives it (app.platform.permissions); AppErrors become
    coded GraphQL errors; anything else is masked."""

    def resolve(self, _next: Callable[..., Any], root: Any, info: Any, *args: Any, **kwargs: Any) -> Any:
        # Mutations check the permission table themselves: a refusal is one of their outcomes (PermissionDenied).
        if info.path.prev is None and not info.field_name.startswith("__") and info.parent_type.name != "Mutation":
            denied = info.context.auth_error(info.field_name)
            if denied is not None:
                raise to_graphql(denied)
        try:
            result = _next(root, info, *args, **kwargs)
        except AppError as exc:
            raise to_graphql(exc) from exc
        if isawaitable(result):
            return _translated(result)
        return result

    def on_operation(self) -> Iterator[None]:
        yield
        result = self.execution_context.result
        if result is not None and result.errors:
            result.errors = [_finish(e) for e in result.errors]


async def _translated(result: Awaitable[Any]) -> Any:
    try:
        return await result
    except AppError as exc:
        raise to_graphql(exc) from exc


def is_unexpected(error: GraphQLError) -> bool:
    """A resolver failure outside the error vocabulary: a bug or an outage, worth a traceback."""
    original = error.original_error
    return original is not None and not isinstance(original, (AppError, GraphQLError))


def _finish(error: GraphQLError) -> GraphQLError:
    """Give every error a code: coded ones pass, parse/validation ones are the client's, the rest are masked."""
    if error.extensions and "code" in error.extensions:
        return error
    original = error.original_error
    if isinstance(original, AppError):
        return to_graphql(original)
    if original is None or isinstance(original, GraphQLError):  # parsing, validation, variable coercion
        return GraphQLError(error.message, nodes=error.nodes, path=error.path, extensions={"code": "BAD_USER_INPUT"})
    outage = as_unavailable(original)
    if outage is not None:
        log.warning("%s (%s: %s)", outage.message, type(original).__name__, original)
        return GraphQLError(outage.message, nodes=error.nodes, path=error.path, extensions={"code": "UNAVAILABLE"})
    log.error("unhandled error in GraphQL resolver", exc_info=original)
    return GraphQLError(INTERNAL_MESSAGE, nodes=error.nodes, path=error.path, extensions={"code": "INTERNAL"})
