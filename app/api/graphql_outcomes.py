"""GraphQL mutations' expected outcomes as data: each mutation answers a union of its success type and the
`UserError` types below, as GraphQL APIs that clients love do (Shopify's `userErrors`), instead of top-level
`errors`. What stays a top-level error is what no mutation expects: a missing or bad token (`UNAUTHENTICATED`),
a store out of reach (`UNAVAILABLE`), a bug (`INTERNAL`), and input the schema itself refuses.

`user_error` turns the service layer's error vocabulary (app.platform.errors) into these types, in one place;
each carries REST's `error` code as `code` and REST's message."""

from __future__ import annotations

from typing import Any

import strawberry

from app.platform.errors import AppError, Conflict, Invalid, NotFound, PreconditionFailed, Unprocessable
from app.platform.permissions import PermissionMissing


@strawberry.interface(description="An expected outcome that is not a success: REST's `error` code and message.")
class UserError:
    code: str
    message: str


@strawberry.type(description="No job has this id.")
class JobNotFound(UserError):
    job_id: strawberry.ID


@strawberry.type(description="The job is running (a trigger, a delete): wait for its run to end.")
class AlreadyRunning(UserError):
    job_id: strawberry.ID


@strawberry.type(description="Nothing of the job runs: there is nothing to cancel.")
class NotRunning(UserError):
    job_id: strawberry.ID


@strawberry.type(description="One field that was refused, by its path in the input (`payload.seconds`).")
class FieldError:
    field: str
    message: str
    type: str | None


@strawberry.type(description="The input was refused; `fields` names each field, when the error is about fields.")
class ValidationFailed(UserError):
    fields: list[FieldError]


@strawberry.type(description="The caller's token lacks `permission` (settings.update grants every one).")
class PermissionDenied(UserError):
    permission: str


@strawberry.type(description="The job changed since the caller read it: expectedVersion is not its version.")
class VersionConflict(UserError):
    current_version: int | None


@strawberry.type(
    description="The job's state refuses the change: the id exists (job_exists), it is built in (builtin_job), "
    "or it kept changing (edit_conflict)."
)
class JobConflict(UserError):
    pass


@strawberry.type(
    description="This idempotencyKey went with another request (idempotency_key_reused), or its first request is "
    "still running (idempotency_in_progress)."
)
class IdempotencyConflict(UserError):
    pass


def user_error(exc: AppError, job_id: str | None = None) -> UserError | None:
    """The UserError type of a service error, or None when no mutation expects it (it stays a top-level error)."""
    code, message = exc.code, exc.message
    if isinstance(exc, NotFound) and code == "job_not_found":
        return JobNotFound(code=code, message=message, job_id=strawberry.ID(job_id or ""))
    if isinstance(exc, Conflict):
        if code == "already_running":
            return AlreadyRunning(code=code, message=message, job_id=strawberry.ID(job_id or ""))
        if code == "not_running":
            return NotRunning(code=code, message=message, job_id=strawberry.ID(job_id or ""))
        if code == "idempotency_in_progress":
            return IdempotencyConflict(code=code, message=message)
        return JobConflict(code=code, message=message)
    if isinstance(exc, Unprocessable):
        return IdempotencyConflict(code=code, message=message)
    if isinstance(exc, PreconditionFailed):
        details: Any = exc.details
        current = details.get("currentVersion") if isinstance(details, dict) else None
        return VersionConflict(code=code, message=message, current_version=current)
    if isinstance(exc, PermissionMissing):
        return PermissionDenied(code=code, message=message, permission=exc.permission)
    if isinstance(exc, Invalid):
        fields = [
            FieldError(field=str(d.get("field", "")), message=str(d.get("message", "")), type=d.get("type"))
            for d in (exc.details if isinstance(exc.details, list) else [])
            if isinstance(d, dict)
        ]
        return ValidationFailed(code=code, message=message, fields=fields)
    return None


def outcome(exc: AppError, allowed: tuple[type[UserError], ...], job_id: str | None = None) -> Any:
    """The union member for a service error of a mutation whose union holds `allowed`; anything else is raised
    again, as the top-level error it is. (Any: the member is one of `allowed`, which no checker can tell from
    the tuple; the schema builder checks every union.)"""
    member = user_error(exc, job_id)
    if member is None or not isinstance(member, allowed):
        raise exc
    return member
