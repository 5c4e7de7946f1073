"""tortoise's asyncpg client, with transactions that give their connection back when cancelled as they begin.

tortoise (1.1.9) takes a connection from the pool, then awaits BEGIN; cancelled in between, it raised
without ever returning the connection. Each such cancel cost the pool a connection for good, and after as
many of them as the pool's size (tortoise's default: 5) every query of the process waited forever. A cancel
lands there easily: a reconcile loop cancelled at shutdown, or a run cancelled by the embedded worker's
supervisor.
"""

from __future__ import annotations

import logging
from typing import Any

from tortoise.backends.asyncpg.client import AsyncpgDBClient, TransactionWrapper
from tortoise.backends.base.client import TransactionalDBClient, TransactionContext, TransactionContextPooled
from tortoise.connection import get_connections

from app.aio import in_background

log = logging.getLogger(__name__)


class _CancelSafeTransactionContext(TransactionContextPooled):
    async def __aenter__(self) -> TransactionalDBClient:
        await self.ensure_connection()
        pool = self.client._parent._pool
        connection = await pool.acquire()  # asyncpg gives it back itself if cancelled in here
        self.client._connection = connection
        token = None
        try:
            token = self.token = get_connections().set(self.connection_name, self.client)
            await self.client.begin()
        except BaseException:
            if token is not None:
                get_connections().reset(token)
            in_background(_give_back(pool, connection), "postgres-abandoned-begin")
            raise
        return self.client


async def _give_back(pool: Any, connection: Any) -> None:  # asyncpg's Pool and its proxy (untyped)
    try:
        # asyncpg's release waits for the cancelled BEGIN, then rolls back whatever it left open.
        await pool.release(connection)
    except Exception:
        log.warning("could not return a connection abandoned as its transaction began", exc_info=True)


class CancelSafeAsyncpgClient(AsyncpgDBClient):
    def _in_transaction(self) -> TransactionContext:
        return _CancelSafeTransactionContext(TransactionWrapper(self), self._pool_init_lock)


client_class = CancelSafeAsyncpgClient
