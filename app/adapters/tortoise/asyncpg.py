"""tortoise's asyncpg client, with transactions that give their connection back when cancelled as they begin.

tortoise (1.1.9) takes a connection from the pool, then awaits BEGIN; cancelled (or failing) in between, it
raised without ever returning the connection. Each such cancel cost the pool a connection for good, and after as
many of them as the pool's size (tortoise's default: 5) every query of the process waited forever. A cancel
lands there easily: a reconcile loop cancelled at shutdown, a run cancelled by the embedded worker's
supervisor or its timeout, `/readyz` giving up on its query.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import asyncpg
from tortoise.backends.asyncpg.client import AsyncpgDBClient, TransactionWrapper
from tortoise.backends.base.client import TransactionalDBClient, TransactionContext, TransactionContextPooled
from tortoise.connection import get_connections


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
        except (Exception, asyncio.CancelledError):
            if token is not None:
                get_connections().reset(token)
            self._abandon(connection)
            raise
        return self.client

    def _abandon(self, connection: Any) -> None:  # asyncpg's pool connection proxy (untyped)
        # Closed rather than released: a release would wait for the cancelled BEGIN and roll back, and asyncpg
        # logs an error for every connection released inside a transaction it did not see end. Closing gives
        # the pool its slot back at once; it connects again when it needs to. A connection the server dropped
        # is back in the pool already, and its proxy refuses: the error that is raising matters, not that one.
        with contextlib.suppress(asyncpg.InterfaceError):
            connection.terminate()


class CancelSafeAsyncpgClient(AsyncpgDBClient):
    def _in_transaction(self) -> TransactionContext:
        return _CancelSafeTransactionContext(TransactionWrapper(self), self._pool_init_lock)


client_class = CancelSafeAsyncpgClient
