"""A standalone worker's /metrics: prometheus_client's own HTTP server on WORKER_METRICS_PORT.

It serves from a thread, so the queue depth is read there with a synchronous Redis client bounded by
a short timeout, never from the worker's event loop. Another thread follows the event channel for
deleted jobs, whose series this worker's registry would otherwise keep until it restarts.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from wsgiref.simple_server import WSGIServer

import redis
from prometheus_client import start_http_server

from app.engine.depth import queue_depth_now
from app.engine.events import CHANNEL, JOB_DELETED
from app.platform import metrics
from app.platform.config import Settings
from app.platform.redis_pool import tls_options

log = logging.getLogger(__name__)
QUEUE_DEPTH_TIMEOUT_SECONDS = 0.5
FOLLOW_RETRY_SECONDS = 1.0


class MetricsPortUnavailable(Exception):
    """WORKER_METRICS_PORT could not be bound (taken, or METRICS_HOST is not an address of this host)."""


class DeletionFollower:
    """Drops a deleted job's series from this process's registry when any API instance deletes it."""

    def __init__(self, redis_url: str) -> None:
        self._redis_url = redis_url
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metrics-deletions", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._follow()
            except (redis.RedisError, OSError):
                log.debug("worker metrics: event subscription lost; retrying", exc_info=True)
                self._stop.wait(FOLLOW_RETRY_SECONDS)

    def _follow(self) -> None:
        client = redis.Redis.from_url(
            self._redis_url, socket_connect_timeout=QUEUE_DEPTH_TIMEOUT_SECONDS, **tls_options(self._redis_url)
        )
        pubsub = client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        try:
            pubsub.subscribe(CHANNEL)
            while not self._stop.is_set():
                message = pubsub.get_message(timeout=1.0)
                if message is not None:
                    self._on_event(message["data"])
        finally:
            pubsub.close()
            client.close()

    @staticmethod
    def _on_event(raw: bytes) -> None:
        try:
            event = json.loads(raw)
            if event.get("event") == JOB_DELETED:
                metrics.job_deleted(str(event["jobId"]))
        except (ValueError, KeyError, TypeError, AttributeError):
            log.debug("worker metrics: ignoring malformed event %r", raw)


class WorkerMetricsServer:
    def __init__(
        self, server: WSGIServer, thread: threading.Thread, client: redis.Redis, follower: DeletionFollower
    ) -> None:
        self._server, self._thread, self._client, self._follower = server, thread, client, follower

    @classmethod
    def start(cls, settings: Settings) -> WorkerMetricsServer | None:
        """Serve on METRICS_HOST:WORKER_METRICS_PORT; None when the port is 0 (off)."""
        if not settings.metrics_enabled or settings.worker_metrics_port == 0:
            return None
        client = redis.Redis.from_url(
            settings.redis_url,
            socket_timeout=QUEUE_DEPTH_TIMEOUT_SECONDS,
            socket_connect_timeout=QUEUE_DEPTH_TIMEOUT_SECONDS,
            **tls_options(settings.redis_url),
        )

        def depth() -> float:
            try:
                return float(queue_depth_now(client))
            except (redis.RedisError, OSError):
                return math.nan

        metrics.QUEUE_DEPTH.set_function(depth)
        address = f"{settings.metrics_host}:{settings.worker_metrics_port}"
        try:
            server, thread = start_http_server(settings.worker_metrics_port, addr=settings.metrics_host)
        except OSError as exc:
            client.close()
            # Say which setting to change: a bare "Address already in use" names neither the port nor why.
            raise MetricsPortUnavailable(
                f"cannot serve worker metrics on {address} (WORKER_METRICS_PORT, METRICS_HOST): {exc.strerror or exc}"
            ) from exc
        log.info("worker metrics on http://%s:%s/metrics", settings.metrics_host, settings.worker_metrics_port)
        follower = DeletionFollower(settings.redis_url)
        follower.start()
        return cls(server, thread, client, follower)

    def close(self) -> None:
        self._follower.close()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        self._client.close()
