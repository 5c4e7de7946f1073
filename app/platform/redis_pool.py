"""Redis connections for every API process and worker: bounded pools, timeouts, a worker's retries, and the JSON
that arq's job records are written in."""

from __future__ import annotations

import io
import json
import pickle
from typing import Any

from arq.connections import ArqRedis, RedisSettings, create_pool
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.adapters.redis import DeadlineRetry, pool_like, use_pool
from app.platform.config import Settings


def job_serializer(record: dict[str, Any]) -> bytes:
    """arq's job records as JSON (arq's `job_serializer`): every argument the engine enqueues is a string, a number,
    null or a JSON object. arq's default, pickle, would run whatever code a record held in every worker that reads
    it: anyone able to write to Redis could."""
    return json.dumps(record, separators=(",", ":")).encode()


class _PlainUnpickler(pickle.Unpickler):
    """Pickle restricted to what it can say without naming a class or function (dicts, lists, tuples, strings,
    numbers, None): nothing it reads can call anything."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"{module}.{name} is refused: an arq job record holds plain values only")


def job_deserializer(data: bytes) -> dict[str, Any]:
    """A record as `job_serializer` wrote it. A record pickled by a release before the JSON one (a fire or retry
    queued before an upgrade) is read as plain values only; anything else raises, and arq then fails that job
    without running it."""
    try:
        record = json.loads(data)
    except ValueError:
        if not data.startswith(b"\x80"):
            raise
        try:
            record = _PlainUnpickler(io.BytesIO(data)).load()
        except Exception as exc:
            raise ValueError(f"not an arq job record of plain values: {exc}") from exc
    if not isinstance(record, dict):
        raise ValueError("an arq job record is a JSON object")
    return record


# arq's create_pool sets no read timeout: a Redis that accepts but never answers (paused, partitioned)
# would hang every caller. Requests fail fast instead, and workers retry within their budget.
SOCKET_TIMEOUT_SECONDS = 2.0


def tls_options(url: str) -> dict[str, Any]:
    """redis-py's options for a `rediss://` URL: the certificate must name the host (redis-py checks only that a
    trusted CA signed it unless told). None for a plain URL, whose connections take no TLS options."""
    return {"ssl_check_hostname": True} if url.startswith("rediss://") else {}


def redis_settings(settings: Settings) -> RedisSettings:
    # One quick attempt: a caller waiting on a dead Redis should get a 503, not a long retry loop.
    rs = RedisSettings.from_dsn(settings.redis_url)
    rs.ssl_check_hostname = True  # rediss://: the certificate must name the host, not only come from a trusted CA
    rs.conn_timeout = 2
    rs.conn_retries = 1
    rs.conn_retry_delay = 0
    return rs


def worker_redis_settings(settings: Settings) -> RedisSettings:
    """A worker waits out a Redis restart instead of dying: a command retries with backoff until
    WORKER_REDIS_RETRY_SECONDS have passed since it first failed, then gives up."""
    rs = RedisSettings.from_dsn(settings.redis_url)
    rs.ssl_check_hostname = True  # rediss://: the certificate must name the host, not only come from a trusted CA
    rs.conn_timeout = 2
    # OSError too: a stopped Redis refuses the connection with a plain ConnectionRefusedError, which
    # redis-py's default (its own ConnectionError and TimeoutError) would not retry at all.
    retried = (RedisConnectionError, RedisTimeoutError, OSError)
    rs.retry = DeadlineRetry(ExponentialBackoff(cap=1.0, base=0.05), settings.worker_redis_retry_seconds, retried)
    # `retry` alone only covers connecting: redis-py retries a command that was sent, or a pipeline, only
    # for the errors listed here. Without them a command in flight when Redis went away (arq's poll, in
    # tests/engine/test_redis_loss.py) failed at once and ended the worker, budget or not (CI, scenario 3).
    rs.retry_on_error = list(retried)
    return rs


async def connect_redis(settings: Settings, *, for_worker: bool = False) -> ArqRedis:
    pool = await create_pool(
        worker_redis_settings(settings) if for_worker else redis_settings(settings),
        job_serializer=job_serializer,
        job_deserializer=job_deserializer,
    )
    await bound(pool, settings)
    return pool


async def bound(client: ArqRedis, settings: Settings) -> None:
    """Give a client that arq made a bounded pool and a read timeout; the connections it made before (arq's
    ping), which had no read timeout, are dropped.

    redis-py's default pool opens a new connection whenever all are busy, without limit: a burst of requests
    against a slow Redis would open thousands. This one makes a command wait up to REDIS_POOL_TIMEOUT_SECONDS
    for a free connection, then fail with redis-py's ConnectionError ("No connection available."), which the API
    answers as 503 `unavailable` like any other Redis outage. It also checks a pooled connection outside its
    lock, so concurrent commands do not queue behind one another's checks (B3 measured that with the default
    pool of redis-py 5)."""
    pool = pool_like(
        client.connection_pool,
        max_connections=settings.redis_pool_size,
        timeout=settings.redis_pool_timeout_seconds,
        read_timeout=SOCKET_TIMEOUT_SECONDS,
    )
    await use_pool(client, pool)
