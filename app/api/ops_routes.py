"""`/healthz`, `/readyz` and `/metrics`: unauthenticated (probes and Prometheus send no token) and cheap.

They are infrastructure, not API, and stay out of /docs, whose every operation needs the bearer token;
the README documents them. /metrics names job ids and reads Redis on each scrape: in production it answers
only a scraper holding METRICS_TOKEN (or turn it off with METRICS_ENABLED=false)."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from app import engine
from app.api import health
from app.platform import metrics
from app.platform.config import Settings
from app.platform.errors import NotFound, Unauthenticated
from app.platform.runtime import Runtime

# The queue depth read at scrape time may take this long; Prometheus' own scrape timeout is 10 s.
QUEUE_DEPTH_TIMEOUT_SECONDS = 0.5

router = APIRouter(tags=["operations"], include_in_schema=False)


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the process answers. Nothing else is checked, so a Redis outage restarts nothing."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """Readiness: the database, Redis and (when embedded) the worker loop, each within READINESS_TIMEOUT_SECONDS."""
    rt: Runtime | None = getattr(request.app.state, "runtime", None)
    if rt is None:
        return _not_ready(health.Readiness({"startup": health.FAILING}))
    checks: dict[str, health.Check] = {
        "database": health.database_answers,
        "redis": health.redis_answers(rt.redis),
    }
    jobs_engine: engine.Engine | None = getattr(request.app.state, "engine", None)
    if jobs_engine is not None and jobs_engine.has_worker:
        checks["worker"] = _alive(jobs_engine)
    result = await health.readiness(checks, rt.settings.readiness_timeout_seconds)
    if result.ready:
        return JSONResponse({"status": "ready", "checks": result.checks})
    return _not_ready(result)


def _alive(jobs_engine: engine.Engine) -> health.Check:
    async def check() -> bool:
        return jobs_engine.alive()

    return check


def _not_ready(result: health.Readiness) -> JSONResponse:
    # The error vocabulary's shape, plus the checks: a probe reads the status, a person the message.
    body = {
        "success": False,
        "error": "not_ready",
        "message": f"Not ready: {', '.join(result.failing)}",
        "status": "unavailable",
        "checks": result.checks,
    }
    return JSONResponse(body, status_code=503)


@router.get("/metrics")
async def prometheus_metrics(request: Request) -> Response:
    """This process's metrics in Prometheus' text format; the queue depth is read from Redis now."""
    rt: Runtime | None = getattr(request.app.state, "runtime", None)
    if rt is not None:
        if not rt.settings.metrics_enabled:
            raise NotFound("Metrics are turned off (METRICS_ENABLED=false)")
        _check_scraper(request, rt.settings)
        metrics.QUEUE_DEPTH.set(await health.queue_depth(rt.redis, QUEUE_DEPTH_TIMEOUT_SECONDS))
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


def _check_scraper(request: Request, settings: Settings) -> None:
    """With METRICS_TOKEN set, only a scraper sending it as its bearer token; without, only outside production (the
    series name every job and how it fares: nothing a stranger on the API port should read)."""
    token = settings.metrics_token
    if token is None:
        if settings.app_env == "production":
            raise NotFound("Metrics are served to a scraper with METRICS_TOKEN in production")
        return
    sent = request.headers.get("authorization", "")
    expected = f"Bearer {token.get_secret_value()}"
    if not hmac.compare_digest(sent.encode(), expected.encode()):
        raise Unauthenticated("Scraping /metrics needs METRICS_TOKEN as a bearer token", code="invalid_token")
