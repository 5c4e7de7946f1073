"""Group commit: calls that arrive while a flush is in progress go together into the next one.

A burst of scheduled fires claims and completes hundreds of runs in the same few milliseconds; one
transaction, one Lua call and one pipeline for all of them costs little more than for one, and SQLite
(one writer, a file lock shared by every process) gains most: each write transaction is a lock another
process may have to back off from. Nothing waits for a batch to fill: a lone call is flushed at once, and
under load the batches grow by themselves.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import weakref
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import structlog

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Res = TypeVar("Res")


class GroupCommit(Generic[Req, Res]):
    """`flush` takes a list of requests and returns one result per request, in order."""

    def __init__(self, flush: Callable[[list[Req]], Awaitable[list[Res]]], name: str) -> None:
        self._flush = flush
        self._name = name
        self._pending: list[tuple[Req, asyncio.Future[Res]]] = []
        self._drainer: asyncio.Task[None] | None = None

    async def submit(self, request: Req, *, patience: float = 10.0) -> Res:
        """The request's result. Once submitted, a request is carried out even if the caller is cancelled
        (a shutdown must not abandon a half-recorded run): the caller waits up to `patience` for it, then
        the cancellation goes on."""
        loop = asyncio.get_running_loop()
        outcome: asyncio.Future[Res] = loop.create_future()
        self._pending.append((request, outcome))
        if self._drainer is None:
            # Not in the caller's context: a batch serves many callers, and the first one's bound log
            # fields (its job and run ids) must not label the others' work.
            context = contextvars.copy_context()
            context.run(structlog.contextvars.clear_contextvars)
            self._drainer = loop.create_task(self._drain(), name=f"group-commit-{self._name}", context=context)
        cancelled_at: float | None = None
        while not outcome.done():
            timeout = None
            if cancelled_at is not None:
                timeout = cancelled_at + patience - loop.time()
                if timeout <= 0:
                    raise asyncio.CancelledError
            try:
                # asyncio.wait never cancels what it waits for: the outcome survives our cancellation.
                await asyncio.wait({outcome}, timeout=timeout)
            except asyncio.CancelledError:
                if cancelled_at is None:
                    cancelled_at = loop.time()
        if cancelled_at is not None:
            raise asyncio.CancelledError
        return outcome.result()

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                await self._run(batch)
        finally:
            self._drainer = None

    async def _run(self, batch: list[tuple[Req, asyncio.Future[Res]]]) -> None:
        try:
            results = await self._flush([request for request, _ in batch])
        except Exception as exc:
            if len(batch) > 1:
                # One bad request must not fail the others: each on its own.
                for one in batch:
                    await self._run([one])
                return
            _settle_error(batch[0][1], exc)
            return
        except BaseException:
            for _, outcome in batch:
                if not outcome.done():
                    outcome.cancel()
            raise
        for (_, outcome), result in zip(batch, results, strict=True):
            if not outcome.done():
                outcome.set_result(result)


def _settle_error(outcome: asyncio.Future[Res], exc: Exception) -> None:
    if not outcome.done():
        outcome.set_exception(exc)


_K = TypeVar("_K")


def per_loop(factory: Callable[[], _K]) -> Callable[[], _K]:
    """One instance of `factory()` per event loop (a process's loop; each test has its own)."""
    instances: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _K] = weakref.WeakKeyDictionary()

    def get() -> _K:
        loop = asyncio.get_running_loop()
        found = instances.get(loop)
        if found is None:
            found = instances[loop] = factory()
        return found

    return get
