"""The threads a handler started: a run is not over, nor its lease released, while any of them still runs.

A handler that hands work to a thread (`asyncio.to_thread`, `loop.run_in_executor(None, ...)`, as
`cleanup-orphaned-files` and a synchronous notification sender do) cannot be stopped there: cancelling the
handler ends its task at once, while the thread runs on to its end. If the runner recorded the run and released
the lease then, the next run of the job could start while this one was still executing. So the event loop's
default executor is a `RunThreads`, which notes every call submitted from inside a run's handler (the handler's
task carries a `ContextVar` naming the run), and the runner waits for those calls to end, still renewing the
lease, before it records the outcome.

Work a handler runs in a thread or executor of its own is not seen here; handlers use the default executor.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

# In a handler's task (and only there): the calls it has submitted that have not ended.
_calls: contextvars.ContextVar[set[concurrent.futures.Future[Any]] | None] = contextvars.ContextVar(
    "run_thread_calls", default=None
)


class RunThreads(concurrent.futures.ThreadPoolExecutor):
    """A ThreadPoolExecutor that notes the calls a run's handler submits (elsewhere, it is just that)."""

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[T]:
        future = super().submit(fn, *args, **kwargs)
        calls = _calls.get()
        if calls is not None:
            calls.add(future)
            future.add_done_callback(calls.discard)
        return future


_installed: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, RunThreads] = weakref.WeakKeyDictionary()


def install(loop: asyncio.AbstractEventLoop) -> None:
    """Make a RunThreads the loop's default executor, once per loop, as the engine starts (before any run). An
    executor the loop made earlier (for a DNS lookup while connecting, say) is no longer handed work; its idle
    threads end with the process."""
    if loop not in _installed:
        executor = _installed[loop] = RunThreads(thread_name_prefix="run-thread")
        loop.set_default_executor(executor)


def handler_context() -> tuple[contextvars.Context, set[concurrent.futures.Future[Any]]]:
    """A context to run a handler's task in, and the set of its calls still running in threads."""
    calls: set[concurrent.futures.Future[Any]] = set()
    context = contextvars.copy_context()
    context.run(_calls.set, calls)
    return context, calls


async def ended(calls: set[concurrent.futures.Future[Any]]) -> None:
    """Wait until every call in `calls` has ended (a call cancelled before it started counts as ended)."""
    while calls:
        await asyncio.wait([asyncio.wrap_future(f) for f in list(calls)])
