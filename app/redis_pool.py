"""The Redis connection pool every API process and worker uses: bounded, on redis-py's public API."""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, ConnectionPool

from app.config import Settings


def bounded_pool(template: ConnectionPool, settings: Settings) -> BlockingConnectionPool:
    """A pool of at most REDIS_POOL_SIZE connections, configured like `template` (arq's pool).

    redis-py's default pool opens a new connection whenever all are busy, without limit: a burst
    of requests against a slow Redis would open thousands. This one makes a command wait up to
    REDIS_POOL_TIMEOUT_SECONDS for a free connection, then fail with redis-py's ConnectionError
    ("No connection available."), which the API answers as 503 `unavailable` like any other Redis
    outage. It also checks a pooled connection outside its lock, so concurrent commands do not
    queue behind one another's checks (B3 measured that with the default pool of redis-py 5).
    """
    return BlockingConnectionPool(
        connection_class=template.connection_class,
        max_connections=settings.redis_pool_size,
        timeout=settings.redis_pool_timeout_seconds,  # type: ignore[arg-type]  # typed int, takes seconds
        **template.connection_kwargs,
    )
