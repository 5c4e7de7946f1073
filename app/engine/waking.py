"""An arq worker that sleeps until there is work, instead of polling on a fixed clock.

arq's own loop polls its queue every `poll_delay`: a short delay makes an idle worker busy (CPU and
Redis commands), a long one makes every fire wait. This worker polls once, then waits until the
first of: a wake-up published on enqueue (`wake_channel`), the earliest deferred job coming due, or an
idle cap (`idle_poll_seconds`, the safety net for anything enqueued without a wake-up). Every worker
subscribed to the queue's wake-up channel wakes; arq's own `in-progress` claim still decides which one
runs a job. While the subscription is down, it falls back to arq's fixed `poll_delay`; a short outage the
subscription's connection rides out (the worker's Redis retries) may lose the wake-ups published meanwhile,
which the idle cap bounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator
from typing import Any

from arq.connections import ArqRedis
from redis.exceptions import RedisError

from app.adapters.arq import ArqWorker, first_due_after
from app.platform.aio import cancel_and_wait

log = logging.getLogger(__name__)

WAKE_SUFFIX = ":wake"
RESUBSCRIBE_DELAY_SECONDS = 1.0
# Below the pool's socket timeout: an idle subscription is not a dead one.
LISTEN_TIMEOUT_SECONDS = 1.0
# Deferred scores are milliseconds and arq skips a job whose score is still ahead of its clock: wake a
# hair after the due time rather than a hair before and then again.
DUE_MARGIN_SECONDS = 0.0005


def wake_channel(queue_name: str) -> str:
    """Where enqueuers tell sleeping workers that a job is due at some time (epoch ms; 0: now)."""
    return queue_name + WAKE_SUFFIX


def decode_wake(data: bytes | str) -> int:
    """The due time (epoch ms) a wake-up carries; 0 (now) when unreadable."""
    try:
        return int(data)
    except (TypeError, ValueError):
        return 0


async def wake_workers(redis: ArqRedis, due_ms: int = 0) -> None:
    """One PUBLISH: idle workers poll at once (or plan for `due_ms`) instead of at their idle cap.

    Best effort: the job is queued already, and a worker that misses this finds it within its cap."""
    try:
        await redis.publish(wake_channel(redis.default_queue_name), due_ms)
    except RedisError:
        log.warning("could not wake the workers; they find the job at their next idle poll", exc_info=True)


def _now_ms() -> int:
    return int(time.time() * 1000)


class WakingWorker(ArqWorker):
    def __init__(self, *args: Any, idle_poll_seconds: float = 1.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.idle_poll_s = idle_poll_seconds
        self.wake_channel = wake_channel(self.queue_name)
        self._wake = asyncio.Event()
        self._subscribed = asyncio.Event()
        self._next_poll_at = 0.0  # wall clock (time.time()) of the next planned poll
        self._polled_at_ms = 0
        self._saturated = False  # the last poll found every slot busy

    @contextlib.asynccontextmanager
    async def polling(self) -> AsyncIterator[None]:
        listener = asyncio.create_task(self._listen(), name="worker-wake-listener")
        try:
            yield
        finally:
            await cancel_and_wait(listener)

    def before_poll(self) -> None:
        self._wake.clear()
        # Taken before arq reads the queue "up to now": anything due after this the poll may not have seen, so the
        # wait after it plans for it (a job due during the poll must not be slept through until the idle cap).
        self._polled_at_ms = _now_ms()

    def slot_freed(self) -> None:
        if self._saturated or not self.read_everything:
            # Due jobs may have been left for a free slot: look again now that there is one.
            self._wake.set()

    async def wait_for_work(self) -> None:
        self._saturated = self.full()
        if not self._subscribed.is_set() or not self.accepting:
            await asyncio.sleep(self.poll_delay)
            return
        if self._saturated or not self.read_everything:
            # A backlog: the next poll comes when a slot frees (a finishing run wakes us), or after arq's poll
            # delay when the backlog is running elsewhere. Never without yielding.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_delay)
            return
        if self._wake.is_set():
            return
        delay = self.idle_poll_s
        self._next_poll_at = math.inf  # planning: any wake-up from here on means "look again"
        due = await self._next_due(self._polled_at_ms)
        now = time.time()
        if due is not None:
            delay = min(delay, max(0.0, due - now + DUE_MARGIN_SECONDS))
        self._next_poll_at = now + delay
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), delay)
        self._next_poll_at = 0.0

    async def _next_due(self, after_ms: int) -> float | None:
        """When the earliest job the last poll could not have read comes due (epoch seconds); possibly
        already. Older scores belong to jobs that poll read (running, or running elsewhere)."""
        return await first_due_after(self.pool, self.queue_name, after_ms)

    def _on_wake(self, due_ms: int) -> None:
        if due_ms <= _now_ms():
            self._wake.set()  # due now: poll at once
        elif due_ms / 1000 < self._next_poll_at:
            self._wake.set()  # sleeping (or planning) past it: plan again
        # Otherwise it is due after the planned poll, or we are polling (next_poll_at 0) and the plan made
        # after this poll sees it: a burst of fires that each enqueue the next does not cause a poll each.

    async def _listen(self) -> None:
        while True:
            try:
                await self._subscription()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError):
                log.warning("worker wake-ups: Redis subscription lost; polling every %s s meanwhile", self.poll_delay)
            finally:
                self._subscribed.clear()
            await asyncio.sleep(RESUBSCRIBE_DELAY_SECONDS)

    async def _subscription(self) -> None:
        pubsub = self.pool.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(self.wake_channel)
            self._subscribed.set()
            self._wake.set()  # whatever was enqueued while nobody listened
            while True:
                message = await pubsub.get_message(timeout=LISTEN_TIMEOUT_SECONDS)
                if message is not None:
                    self._on_wake(decode_wake(message["data"]))
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]
