"""redis-py's asyncio connection pool, minus a lock held across an event-loop turn."""

from __future__ import annotations

from typing import Any

from redis.asyncio import ConnectionPool
from redis.asyncio.connection import AbstractConnection


class CheckOutsideLockPool(ConnectionPool):
    """Checks a pooled connection after taking it, not while holding the pool's lock.

    redis-py 5 checks every connection it hands out with a zero-timeout read, which always yields to
    the event loop, and does so inside the pool-wide lock: concurrent commands then queue behind one
    another's checks, one per loop turn. With 50 concurrent `GET /api/jobs` that wait, not Redis, was
    most of a request's time (B3). redis-py's own BlockingConnectionPool already checks outside its
    lock; the lock only guards the lists of free and busy connections, and a connection taken from
    them belongs to this caller alone.
    """

    async def get_connection(
        self,
        command_name: Any = None,  # noqa: ARG002 - redis-py's signature
        *keys: Any,  # noqa: ARG002
        **options: Any,  # noqa: ARG002
    ) -> AbstractConnection:
        async with self._lock:
            connection: AbstractConnection = self.get_available_connection()  # type: ignore[no-untyped-call]
        try:
            await self.ensure_connection(connection)
        except BaseException:
            await self.release(connection)
            raise
        return connection
