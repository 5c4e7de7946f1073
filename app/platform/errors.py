"""The one error vocabulary. Services raise these; each transport translates them in one place."""

from __future__ import annotations

from typing import Any, ClassVar


class AppError(Exception):
    """A failure the client can act on. `code` is the stable machine code."""

    status: ClassVar[int] = 400
    default_code: ClassVar[str] = "bad_request"

    def __init__(self, message: str, *, code: str | None = None, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.details = details


class Invalid(AppError):
    status = 400
    default_code = "validation_error"


class Unauthenticated(AppError):
    status = 401
    default_code = "unauthorized"


class Forbidden(AppError):
    status = 403
    default_code = "forbidden"


class NotFound(AppError):
    status = 404
    default_code = "not_found"


class Conflict(AppError):
    status = 409
    default_code = "conflict"


class PayloadTooLarge(AppError):
    status = 413
    default_code = "payload_too_large"


class Unavailable(AppError):
    """A backing store (Redis, the database) cannot be reached; retry later."""

    status = 503
    default_code = "unavailable"


class PreconditionFailed(AppError):
    """The client's `If-Match` (GraphQL: expectedVersion) names a version that is no longer the current one."""

    status = 412
    default_code = "precondition_failed"


class Unprocessable(AppError):
    status = 422
    default_code = "unprocessable"
