"""An arq worker that sleeps until there is work, instead of polling on a fixed clock.

arq's own loop polls its queue every `poll_delay`: a short delay makes an idle worker busy (CPU and
Redis commands), a long one makes every trigger wait. This worker polls once, then waits until the
first of: a wake-up published by `app.queue` on enqueue, the earliest deferred job coming due, or an
idle cap (`idle_poll_seconds`, the safety net for anything that bypasses `app.queue`). Every worker
subscribed to the queue's wake-up channel wakes; arq's own `in-progress` locking still decides which one
runs a job. While the subscription is down, it falls back to arq's fixed `poll_delay`; a short outage the
subscription's connection rides out (app.platform.runtime's retries) may lose the wake-ups published meanwhile, which
the idle cap bounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from typing import Any

from arq import Worker
from arq.connections import create_pool, log_redis_info
from arq.utils import timestamp_ms
from arq.worker import logger as arq_logger
from redis.exceptions import RedisError

from app import queue
from app.platform.aio import cancel_and_wait

log = logging.getLogger(__name__)

RESUBSCRIBE_DELAY_SECONDS = 1.0
# Below the pool's socket timeout: an idle subscription is not a dead one.
LISTEN_TIMEOUT_SECONDS = 1.0
# Deferred scores are milliseconds and arq skips a job whose score is still ahead of its clock: wake a
# hair after the due time rather than a hair before and then again.
DUE_MARGIN_SECONDS = 0.0005


class WakingWorker(Worker):
    def __init__(self, *args: Any, idle_poll_seconds: float = 1.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.idle_poll_s = idle_poll_seconds
        self.wake_channel = queue.wake_channel(self.queue_name)
        self._wake = asyncio.Event()
        self._subscribed = asyncio.Event()
        self._next_poll_at = 0.0  # wall clock (time.time()) of the next planned poll
        self._polled_at_ms = 0
        self._read_all = True  # the last poll read fewer ids than its limit
        self._saturated = False  # the last poll found every slot busy
        self.polls = 0  # for tests and metrics: how often the queue was read
        self._claims = 0
        self.worker_id = uuid.uuid4().hex

    async def main(self) -> None:
        """arq's Worker.main with the fixed-delay poll loop replaced by `_wait_for_work`."""
        if self._pool is None:
            self._pool = await create_pool(
                self.redis_settings,
                job_deserializer=self.job_deserializer,
                job_serializer=self.job_serializer,
                default_queue_name=self.queue_name,
                expires_extra_ms=self.expires_extra_ms,
            )
        arq_logger.info("Starting worker for %d functions: %s", len(self.functions), ", ".join(self.functions))
        await log_redis_info(self.pool, arq_logger.info)
        self.ctx["redis"] = self.pool
        if self.on_startup:
            await self.on_startup(self.ctx)

        listener = asyncio.create_task(self._listen(), name="worker-wake-listener")
        try:
            while True:
                self._wake.clear()
                self._read_all = True
                # Taken before arq reads the queue "up to now": anything due after this the poll may not
                # have seen, so the wait below plans for it (a job due during the poll, before the wait,
                # must not be slept through until the idle cap).
                self._polled_at_ms = timestamp_ms()
                await self._poll_iteration()
                self.polls += 1
                self._saturated = self.job_counter >= self.max_jobs
                if self.burst:
                    if 0 <= self.max_burst_jobs <= self._jobs_started():
                        await asyncio.gather(*self.tasks.values())
                        return
                    if await self.pool.zcard(self.queue_name) == 0:
                        await asyncio.gather(*self.tasks.values())
                        return
                await self._wait_for_work()
        finally:
            await cancel_and_wait(listener)

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """arq's start_jobs with every claim in one round trip (app.queue.claim_due).

        arq claims the due jobs one after another, four round trips each. Under load each round trip also waits
        for a turn of a busy event loop, so a second's 200 fires were claimed seconds late; late fires then start
        one by one instead of together, which keeps the worker busy and late (the reliability suite's scenario 8
        on PostgreSQL stayed ~1.7 s late in 8 runs out of 9). The slots are taken first, as arq takes its slot
        before each claim, and the ones left unused given back; a full worker is woken by a run ending, as before.
        """
        self._read_all = len(job_ids) < self.queue_read_limit
        slots = 0
        # A free semaphore is taken without yielding: nothing else takes these slots meanwhile.
        while slots < len(job_ids) and self.job_counter < self.max_jobs and not self.sem.locked():
            await self.sem.acquire()
            self.job_counter += 1
            slots += 1
        claimed: list[tuple[str, int]] = []
        token = self._claim_token()
        try:
            if slots:
                claimed = await queue.claim_due(
                    self.pool,
                    queue_name=self.queue_name,
                    job_ids=job_ids,
                    limit=slots,
                    in_progress_ms=int(self.in_progress_timeout_s * 1000),
                    token=token,
                )
        except BaseException:
            # The script may have run although its answer never came (cancelled, or failed past the retries):
            # what it claimed would otherwise stay "in progress" for arq's whole timeout, run by nobody.
            # Bounded: a worker whose Redis is gone is on its way out, and must not wait out a second budget.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(queue.unclaim(self.pool, job_ids=job_ids, token=token)), 2.0)
            raise
        finally:
            for _ in range(slots - len(claimed)):  # not a run ending: no wake-up (see below)
                super()._release_sem_dec_counter_on_complete()
        for job_id, score in claimed:
            task = self.loop.create_task(self.run_job(job_id, score))
            task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
            self.tasks[job_id] = task

    def _claim_token(self) -> str:
        self._claims += 1
        return f"{self.worker_id}:{self._claims}"

    def _release_sem_dec_counter_on_complete(self) -> None:
        super()._release_sem_dec_counter_on_complete()
        if self._saturated or not self._read_all:
            # Due jobs may have been left for a free slot: look again now that there is one.
            self._wake.set()

    async def _wait_for_work(self) -> None:
        if not self._subscribed.is_set() or not self.allow_pick_jobs:
            await asyncio.sleep(self.poll_delay_s)
            return
        if self._saturated or not self._read_all:
            # A backlog: the next poll comes when a slot frees (a finishing run wakes us), or after
            # arq's poll delay when the backlog is running elsewhere. Never without yielding.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_delay_s)
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
        found = await self.pool.zrangebyscore(
            self.queue_name, min=f"({after_ms}", max="+inf", start=0, num=1, withscores=True
        )
        return float(found[0][1]) / 1000 if found else None

    def _on_wake(self, due_ms: int) -> None:
        if due_ms <= timestamp_ms():
            self._wake.set()  # due now (a trigger): poll at once
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
                log.warning("worker wake-ups: Redis subscription lost; polling every %s s meanwhile", self.poll_delay_s)
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
                    self._on_wake(queue.decode_wake(message["data"]))
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]
