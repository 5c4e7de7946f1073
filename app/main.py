"""The ASGI application: REST routes, error translation and the lifespan that wires the stores."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from strawberry.tools import merge_types
from tortoise.contrib.fastapi import RegisterTortoise

from app import engine
from app.activity.graphql import ActivityQuery, ActivitySubscription
from app.activity.routes import router as activity_router
from app.api import graphql, openapi_docs, ops_routes, rest_errors
from app.api.body_limit import BodyLimit
from app.api.live import Hub
from app.api.middleware import RequestContext
from app.dashboard import routes as dashboard_routes
from app.job_types.graphql import JobTypeQuery
from app.job_types.routes import router as job_types_router
from app.jobs import service as jobs_service
from app.jobs.graphql import JobMutation, JobQuery, JobSubscription
from app.jobs.routes import router as jobs_router
from app.jobs.routes import schedules_router
from app.platform import db, gc_tuning
from app.platform.config import Settings, get_settings
from app.platform.logs import configure_logging
from app.platform.redis_pool import connect_redis
from app.platform.runtime import Runtime
from app.runs.graphql import RunQuery, RunSubscription
from app.runs.routes import router as runs_router
from app.runs.routes import run_router
from workers import settings as worker_definition

log = logging.getLogger(__name__)

# The GraphQL schema, merged from each domain's root types.
schema = graphql.build_schema(
    merge_types("Query", (JobQuery, RunQuery, ActivityQuery, JobTypeQuery)),
    merge_types("Mutation", (JobMutation,)),
    merge_types("Subscription", (JobSubscription, ActivitySubscription, RunSubscription)),
)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app. Settings are read when it starts (not at import) unless passed in."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        s = settings or get_settings()
        configure_logging(s)
        await db.ensure_current(s)
        async with RegisterTortoise(app, config=db.tortoise_config(s), generate_schemas=False):
            redis = await connect_redis(s)
            rt = Runtime(settings=s, redis=redis)
            app.state.runtime = rt
            # Redis back after an outage may have lost every queued fire: reconcile then, not at the next period.
            hub = Hub(
                redis,
                lambda job_id: jobs_service.find(rt, job_id=job_id),
                on_reconnect=lambda: engine.reconcile(rt),
                as_of_event=jobs_service.as_of_event,
                load_states=lambda job_ids: jobs_service.find_many(rt, job_ids),
            )
            hub.start()
            app.state.hub = hub
            log_feed = engine.LogFeed(redis)
            log_feed.start()
            app.state.log_feed = log_feed
            app.state.graphql_router.configure(s)
            run_handler = await worker_definition.prepare(rt)
            jobs_engine = await engine.start(rt, run_handler=run_handler, embedded_worker=s.embedded_worker)
            app.state.engine = jobs_engine  # /readyz checks its worker
            gc_thresholds = gc_tuning.tune_for_serving()
            try:
                yield
            finally:
                gc_tuning.restore(gc_thresholds)
                await app.state.fanout.aclose()  # its streams close their hub mailboxes: before the hub stops
                await hub.stop()
                await log_feed.stop()
                await jobs_engine.stop(s.shutdown_grace_seconds)
                await redis.aclose()

    app = FastAPI(
        title="jobs-gateway",
        description="Manage background jobs and scheduled tasks.",
        version="0.1.0",
        lifespan=lifespan,
        # Served by app.api.openapi_docs.explorers, which asks the settings (API_DOCS) on each request.
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    rest_errors.install(app)
    openapi_docs.without_422(app)
    app.add_middleware(BodyLimit)
    # Outermost: every response, a 413 too, carries the request id; and shared subscription frames are written
    # with the server's own send it hands on, past every middleware below it (app.api.middleware.server_send).
    app.add_middleware(RequestContext)
    app.include_router(ops_routes.router)
    app.include_router(openapi_docs.explorers())
    app.include_router(runs_router)
    app.include_router(run_router)
    app.include_router(jobs_router)
    app.include_router(schedules_router)
    app.include_router(activity_router)
    app.include_router(job_types_router)
    graphql_router = graphql.router(schema)
    app.state.fanout = graphql_router.fanout  # this process's shared subscription streams
    app.state.graphql_router = graphql_router
    app.include_router(graphql_router, prefix="/graphql", include_in_schema=False)
    app.include_router(dashboard_routes.router())
    return app


app = create_app()
