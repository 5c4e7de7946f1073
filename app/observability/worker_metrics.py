"""A standalone worker's /metrics: prometheus_client's own HTTP server on WORKER_METRICS_PORT.

It serves from a thread, so the queue depth is read there with a synchronous Redis client bounded by
a short timeout, never from the worker's event loop.
"""

from __future__ import annotations

import logging
import math
import threading
from wsgiref.simple_server import WSGIServer

import redis
from arq.constants import default_queue_name
from prometheus_client import start_http_server

from app.config import Settings
from app.observability import metrics

log = logging.getLogger(__name__)
QUEUE_DEPTH_TIMEOUT_SECONDS = 0.5


class MetricsPortUnavailable(Exception):
    """WORKER_METRICS_PORT could not be bound (taken, or METRICS_HOST is not an address of this host)."""


class WorkerMetricsServer:
    def __init__(self, server: WSGIServer, thread: threading.Thread, client: redis.Redis) -> None:
        self._server, self._thread, self._client = server, thread, client

    @classmethod
    def start(cls, settings: Settings) -> WorkerMetricsServer | None:
        """Serve on METRICS_HOST:WORKER_METRICS_PORT; None when the port is 0 (off)."""
        if not settings.metrics_enabled or settings.worker_metrics_port == 0:
            return None
        client = redis.Redis.from_url(
            settings.redis_url,
            socket_timeout=QUEUE_DEPTH_TIMEOUT_SECONDS,
            socket_connect_timeout=QUEUE_DEPTH_TIMEOUT_SECONDS,
        )

        def depth() -> float:
            try:
                count: int = client.zcard(default_queue_name)  # type: ignore[assignment]
                return float(count)
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
        return cls(server, thread, client)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        self._client.close()
