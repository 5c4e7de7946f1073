"""`Idempotency-Key` on REST writes (POST /api/jobs, POST /api/jobs/{jobId}/trigger): the HTTP side of
app.platform.idempotency. The answer kept is the response's status and JSON body, errors included (a 4xx the
operation answered is its answer); a 5xx is not kept, so a retry runs afresh."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from app.api.auth import Principal
from app.api.rest_errors import error_body
from app.platform import idempotency
from app.platform.errors import AppError, Conflict, Forbidden, Invalid, NotFound, PreconditionFailed, Unprocessable
from app.platform.runtime import Runtime

HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"

Answer = tuple[int, Any]  # status, JSON body


async def respond(
    request: Request, rt: Runtime, user: Principal, body: object, run: Callable[[], Awaitable[Answer]]
) -> JSONResponse:
    """`run()`'s answer as a response; with an Idempotency-Key, at most once per caller and key (a replay says
    so in `Idempotent-Replayed: true`)."""
    key = request.headers.get(HEADER)
    if key is None:
        status, content = await run()
        return JSONResponse(content, status_code=status)

    async def operation() -> list[Any]:
        try:
            status, content = await run()
        except AppError as exc:
            if exc.status >= 500:
                raise
            return [exc.status, error_body(exc.code, exc.message, exc.details)]
        return [status, content]

    outcome = await idempotency.run_once(
        rt.redis,
        subject=user.sub,
        key=key,
        request=idempotency.fingerprint("rest", request.method, request.url.path, body),
        operation=operation,
    )
    status, content = outcome.answer
    headers = {REPLAYED: "true"} if outcome.replayed else None
    return JSONResponse(content, status_code=status, headers=headers)


_ERRORS: dict[int, type[AppError]] = {
    kind.status: kind for kind in (Invalid, Forbidden, NotFound, Conflict, PreconditionFailed, Unprocessable)
}


async def once(
    rt: Runtime, user: Principal, key: str | None, request: tuple[object, ...], run: Callable[[], Awaitable[str]]
) -> str:
    """GraphQL's side: `run()` (whose answer is the id of the job it acted on) at most once per caller and key;
    a replay gives the first call's job id, or raises its error again. The mutation then answers with the job
    as it is now: a GraphQL selection is the client's, so what is kept is the outcome, not a response."""
    if key is None:
        return await run()

    async def operation() -> dict[str, Any]:
        try:
            return {"jobId": await run()}
        except AppError as exc:
            if exc.status >= 500:
                raise
            return {"error": {"status": exc.status, "code": exc.code, "message": exc.message, "details": exc.details}}

    outcome = await idempotency.run_once(
        rt.redis, subject=user.sub, key=key, request=idempotency.fingerprint("graphql", *request), operation=operation
    )
    answer: dict[str, Any] = outcome.answer
    error = answer.get("error")
    if error is not None:
        raise _ERRORS.get(error["status"], Invalid)(error["message"], code=error["code"], details=error["details"])
    return str(answer["jobId"])
