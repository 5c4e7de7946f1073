"""The REST translation of every failure into `{"success": false, "error", "message"}`."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.api.outages import OUTAGE_CLASSES, as_unavailable
from app.platform.errors import AppError, Unauthenticated

log = logging.getLogger(__name__)

_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    body: dict[str, Any] = {"success": False, "error": code, "message": message}
    if details is not None:
        body["details"] = details
    return body


async def _app_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AppError)
    headers = {"WWW-Authenticate": _challenge(exc)} if isinstance(exc, Unauthenticated) else None
    return JSONResponse(error_body(exc.code, exc.message, exc.details), status_code=exc.status, headers=headers)


# The challenge's description is one of these fixed texts: nothing of a refused token (its header may carry any
# text, `crit: ["€"]` or quotes) ever reaches a response header, where it could break the encoding or the syntax.
_DESCRIPTIONS = {"token_expired": "The token has expired"}


def _challenge(exc: AppError) -> str:
    # RFC 6750: no error code when no token was sent, `invalid_token` for any token we refuse.
    if exc.code == "missing_token":
        return 'Bearer realm="jobs-gateway"'
    description = _DESCRIPTIONS.get(exc.code, "The token is invalid")
    return f'Bearer realm="jobs-gateway", error="invalid_token", error_description="{description}"'


def _field_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    out = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        out.append({"field": ".".join(loc) or "body", "message": err.get("msg", "invalid"), "type": err.get("type")})
    return out


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = _field_errors(exc)
    if any(d["type"] == "json_invalid" for d in details):
        return JSONResponse(error_body("invalid_json", "Request body is not valid JSON"), status_code=400)
    summary = "; ".join(f"{d['field']}: {d['message']}" for d in details)
    return JSONResponse(error_body("validation_error", f"Invalid request: {summary}", details), status_code=400)


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    return JSONResponse(
        error_body(code, str(exc.detail)), status_code=exc.status_code, headers=getattr(exc, "headers", None)
    )


async def _outage(request: Request, exc: Exception) -> JSONResponse:
    """Redis or the database out of reach: 503 `unavailable`, so that clients retry; any other
    failure of these classes (an SQL mistake) is a bug like any other."""
    unavailable = as_unavailable(exc)
    if unavailable is None:
        return await _unexpected(request, exc)
    log.warning("%s (%s: %s)", unavailable.message, type(exc).__name__, exc)
    return await _app_error(request, unavailable)


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return JSONResponse(error_body("internal", "Internal server error"), status_code=500)


def install(app: FastAPI) -> None:
    app.add_exception_handler(AppError, _app_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    for kind in OUTAGE_CLASSES:
        app.add_exception_handler(kind, _outage)
    app.add_exception_handler(Exception, _unexpected)
