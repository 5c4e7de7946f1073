"""What /docs shows besides the routes themselves: the error body, the error responses of each route,
and examples taken from the Jobs API reference."""

from __future__ import annotations

import json
from typing import Any, Literal

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field

from app.api.outages import DATABASE_DOWN, REDIS_DOWN
from app.platform.errors import NotFound


class ErrorBody(BaseModel):
    """Every REST error (app/api/rest_errors.py)."""

    success: Literal[False] = False
    error: str = Field(description="stable machine code", examples=["not_found"])
    message: str = Field(description="human-readable explanation", examples=["Job 'metadata-sync' not found"])
    details: list[dict[str, Any]] | None = Field(
        default=None, description="per-field problems of a validation error (absent otherwise)"
    )


_ERRORS: dict[int, tuple[str, str, str]] = {
    400: ("Bad job id, body or paging value", "validation_error", "Invalid request: limit: must be at most 100"),
    401: ("Missing, malformed, expired or badly signed token", "token_expired", "Token has expired"),
    403: ("The token lacks the settings.update permission", "forbidden", "Permission 'settings.update' is required"),
    404: ("No job with this id", "job_not_found", "Job 'metadata-sync' not found"),
    409: (
        "The job is running (or the id exists, or it is built in; or, to cancel, nothing runs)",
        "already_running",
        "Job is already running",
    ),
    412: (
        "If-Match names a version of the job that is no longer the current one",
        "precondition_failed",
        "Job 'metadata-sync' changed since you read it (it is at version 4); read it again and retry",
    ),
    413: ("Request body over MAX_BODY_BYTES", "payload_too_large", "Request body is larger than 65536 bytes"),
    422: (
        "The Idempotency-Key was used with a different request",
        "idempotency_key_reused",
        "This Idempotency-Key was used with a different request; use a new key for a new request",
    ),
    503: (f"Redis or the database is out of reach; the database says '{DATABASE_DOWN}'", "unavailable", REDIS_DOWN),
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` entries for these error statuses; 401 and 403 apply to every authenticated route."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in sorted({401, 403, *codes}):
        description, error, message = _ERRORS[code]
        example = {"success": False, "error": error, "message": message}
        out[code] = {
            "model": ErrorBody,
            "description": description,
            "content": {"application/json": {"example": example}},
        }
    return out


def example(value: object, more: dict[int | str, dict[str, Any]]) -> dict[int | str, dict[str, Any]]:
    """A 200 response's example, merged with the error entries in `more`."""
    return {200: {"content": {"application/json": {"example": value}}}, **more}


# From the Jobs API reference (../shared/seeds/000_*.txt), with jobs-gateway's added job fields.
JOB = {
    "id": "metadata-sync",
    "name": "Metadata Sync",
    "description": "Synchronizes game metadata from external sources",
    "enabled": True,
    "running": False,
    "schedule": "0 */6 * * *",
    "lastRun": "2024-01-15T06:00:00.000Z",
    "nextRun": "2024-01-15T12:00:00.000Z",
    "lastResult": "success",
    "lastDuration": 45230,
    "type": "metadata_sync",
    "payload": {},
    "timezone": None,
    "timeout": None,
    "builtin": True,
    "retry": None,
    "overlap": "skip",
    "catchUp": {"window": "5m", "policy": "latest"},
    "pauseAfterFailures": None,
    "consecutiveFailures": 0,
    "cancelling": False,
    "lastSkippedFire": None,
    "version": 3,
}
RUN_PAGE = {
    "logs": [
        {
            "id": 123,
            "jobId": "metadata-sync",
            "startedAt": "2024-01-15T06:00:00.000Z",
            "completedAt": "2024-01-15T06:00:45.230Z",
            "duration": 45230,
            "result": "success",
            "triggeredBy": "scheduler",
            "details": "Synced 150 games",
            "attempt": 1,
            "fireAt": "2024-01-15T06:00:00.000Z",
            "payload": {},
        },
        {
            "id": 122,
            "jobId": "metadata-sync",
            "startedAt": "2024-01-15T00:00:00.000Z",
            "completedAt": "2024-01-15T00:00:32.100Z",
            "duration": 32100,
            "result": "success",
            "triggeredBy": "user:5",
            "details": "Synced 150 games",
            "attempt": 1,
            "fireAt": None,
            "payload": {"batchSize": 10},
        },
    ],
    "total": 45,
    "limit": 50,
    "offset": 0,
}
RUN_DETAIL = {
    **RUN_PAGE["logs"][0],  # type: ignore[index]
    "output": {"summary": "Synced 150 games", "fetched": 150, "created": 3, "updated": 147},
    "progress": {"done": 150, "total": 150, "note": "upserted", "at": "2024-01-15T06:00:45.100Z"},
    "errorType": None,
    "traceback": None,
}
RUN_LOG_PAGE = {
    "runId": 123,
    "lines": [
        {
            "seq": 1,
            "at": "2024-01-15T06:00:00.120Z",
            "level": "info",
            "message": "fetched the catalogue",
            "fields": {"games": 150},
        }
    ],
    "after": 1,
    "more": False,
    "ended": True,
}
ACTIVITY_PAGE = {
    "logs": [
        {
            "id": 7,
            "event": "jobs.trigger",
            "jobId": "metadata-sync",
            "actor": "user:5",
            "details": {"enabled": True},
            "createdAt": "2024-01-15T06:00:00.000Z",
        }
    ],
    "total": 1,
    "limit": 50,
    "offset": 0,
}
CREATE_JOB = {
    "id": "cleanup-expired-listings",
    "name": "Cleanup Expired Listings",
    "description": "Remove listings older than 30 days",
    "type": "cleanup_expired_listings",
    "interval": "24h",
    "payload": {"days_old": 30},
    "enabled": True,
    "timeout": 600,
    "retry": {"maxAttempts": 3, "backoff": "30s", "maxBackoff": "10m", "multiplier": 2, "jitter": 0.1},
    "overlap": "skip",
    "catchUp": {"window": "1h", "policy": "latest"},
    "pauseAfterFailures": 5,
}
STARTED = {"success": True, "message": "Job started successfully"}
STOPPED = {"success": True, "message": "Job stopped successfully"}
TRIGGERED = {"success": True, "message": "Job triggered successfully"}
CANCELLED = {"success": True, "message": "Run cancelled"}
SKIPPED_PAGE = {
    "fires": [
        {
            "id": 9,
            "jobId": "metadata-sync",
            "fireAt": "2024-01-15T12:00:00.000Z",
            "lastFireAt": "2024-01-15T12:00:00.000Z",
            "count": 1,
            "reason": "overlap",
            "recordedAt": "2024-01-15T12:00:00.004Z",
        }
    ],
    "total": 1,
    "limit": 50,
    "offset": 0,
    "nextBefore": None,
}


def without_422(app: FastAPI) -> None:
    """FastAPI documents a 422 on every route with parameters; jobs-gateway answers bad input with 400
    (app/api/rest_errors.py), which the routes list themselves. Drop FastAPI's 422s so that /docs tells the truth
    (a route's own 422, `idempotency_key_reused`, stays)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = build()
            for item in spec.get("paths", {}).values():
                for operation in item.values():
                    responses = operation.get("responses", {})
                    if "HTTPValidationError" in json.dumps(responses.get("422", {})):
                        responses.pop("422")
            schemas = spec.get("components", {}).get("schemas", {})
            for name in ("HTTPValidationError", "ValidationError"):
                schemas.pop(name, None)
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def explorers() -> APIRouter:
    """/openapi.json, /docs and /redoc, answered only while API_DOCS is on (by default outside production): the
    settings are read at start-up, after the app is built, so each request asks."""
    router = APIRouter(include_in_schema=False)

    def guard(request: Request) -> None:
        if not request.app.state.runtime.settings.api_docs_on:
            raise NotFound("The API docs are off (API_DOCS; off by default in production)")

    @router.get("/openapi.json")
    async def openapi_json(request: Request) -> JSONResponse:
        guard(request)
        return JSONResponse(request.app.openapi())

    @router.get("/docs")
    async def swagger(request: Request) -> HTMLResponse:
        guard(request)
        return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{request.app.title} - Swagger UI")

    @router.get("/redoc")
    async def redoc(request: Request) -> HTMLResponse:
        guard(request)
        return get_redoc_html(openapi_url="/openapi.json", title=f"{request.app.title} - ReDoc")

    return router
