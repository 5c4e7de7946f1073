"""Live job status for subscribers in this process, fed by one Redis pub/sub subscription.

Workers and API instances publish on the engine's event channel (`app.engine.EVENTS_CHANNEL`); each API process
runs one `Hub`, which resolves every event to the job's current state once and hands it to each interested subscriber.
A subscriber's mailbox holds the last few unsent states per job (app.api.backlog): a subscriber that falls
behind for a moment still sees every change, a stalled one costs a few entries per job, and neither
delays the others.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from app.api.backlog import Backlog
from app.engine import EVENTS_CHANNEL as CHANNEL
from app.engine import JOB_DELETED
from app.platform import metrics
from app.platform.aio import cancel_and_wait, keep_listening

log = logging.getLogger(__name__)

DELETED = JOB_DELETED


@dataclass(frozen=True)
class Change:
    """A job changed; `state` is its current state, or None when the job is gone."""

    job_id: str
    state: object | None


@dataclass(eq=False)
class Mailbox:
    job_id: str | None  # None: every job
    deletions_only: bool = False  # `jobDeleted`: the other changes are not its business
    pending: Backlog[str, Change] = field(default_factory=Backlog)
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    def wants(self, job_id: str, deleted: bool) -> bool:
        return self.job_id in (None, job_id) and (deleted or not self.deletions_only)

    def offer(self, change: Change) -> None:
        if self.wants(change.job_id, change.state is None):
            if self.pending.push(change.job_id, change):
                metrics.EVENTS_DROPPED.inc()
            self.ready.set()

    async def next_change(self, timeout: float) -> Change | None:
        """The next change, oldest job first; None when `timeout` passes without one."""
        while not self.pending:
            self.ready.clear()
            try:
                await asyncio.wait_for(self.ready.wait(), timeout)
            except TimeoutError:
                return None
        metrics.EVENTS_DELIVERED.inc()
        return self.pending.pop()


Loader = Callable[[str], Awaitable[object | None]]
# Many jobs' states in one read of each store; a job absent from the answer is gone.
BatchLoader = Callable[[list[str]], Awaitable[dict[str, Any]]]
# Events already received when the hub gets to them are handled together, up to this many.
MAX_BATCH = 500
# The loaded state as of the event being handled (the event's own facts over the later read).
EventView = Callable[[Any, dict[str, Any]], object]


class Hub:
    def __init__(
        self,
        redis: Redis,
        load_state: Loader,
        retry_delay: float = 1.0,
        on_reconnect: Callable[[], Coroutine[Any, Any, object]] | None = None,
        as_of_event: EventView | None = None,
        load_states: BatchLoader | None = None,
    ) -> None:
        self._redis = redis
        self._load_state = load_state
        self._load_states = load_states
        self._as_of_event = as_of_event
        self._retry_delay = retry_delay
        # Called (in the background) each time the subscription is back after a loss: Redis itself
        # may have restarted empty, so the caller re-enqueues what it must at once.
        self._on_reconnect = on_reconnect
        self._reconnects: set[asyncio.Task[object]] = set()
        self._mailboxes: set[Mailbox] = set()
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()
        self._subscribed_before = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="live-hub")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
        await cancel_and_wait(*self._reconnects)

    def open(self, job_id: str | None, *, deletions_only: bool = False) -> Mailbox:
        box = Mailbox(job_id=job_id, deletions_only=deletions_only)
        self._mailboxes.add(box)
        metrics.LIVE_SUBSCRIPTIONS.inc()
        return box

    def close(self, box: Mailbox) -> None:
        if box in self._mailboxes:
            self._mailboxes.discard(box)
            metrics.LIVE_SUBSCRIPTIONS.dec()

    async def _run(self) -> None:
        await keep_listening(
            self._listen, what="live events", retry_delay=self._retry_delay, on_lost=self.connected.clear
        )

    async def _listen(self) -> None:
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(CHANNEL)
            if self._subscribed_before:
                self._after_reconnect()
                await self._resync()
            self._subscribed_before = True
            self.connected.set()
            while True:
                message = await pubsub.get_message(timeout=1.0)
                if message is None:
                    continue
                if self._load_states is None:
                    await self._dispatch(message["data"])
                    continue
                # A burst (hundreds of runs starting on the same second): what has arrived meanwhile is read
                # in one query, not one per event.
                batch = [message["data"]]
                while len(batch) < MAX_BATCH and (more := await pubsub.get_message(timeout=0.0)) is not None:
                    batch.append(more["data"])
                await self._dispatch_many(batch)
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]

    def _after_reconnect(self) -> None:
        if self._on_reconnect is None:
            return
        task: asyncio.Task[object] = asyncio.create_task(self._on_reconnect(), name="live-hub-reconnect")
        self._reconnects.add(task)
        task.add_done_callback(self._reconnect_done)

    def _reconnect_done(self, task: asyncio.Task[object]) -> None:
        self._reconnects.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("live events: the after-reconnect work failed", exc_info=task.exception())

    async def _resync(self) -> None:
        """After a lost subscription: events of the gap are gone, so send every watched job's state now,
        lest a subscriber keep showing a run that ended meanwhile as running."""
        watched = {box.job_id for box in self._mailboxes if box.job_id is not None}
        for job_id in sorted(watched):
            await self._dispatch(json.dumps({"event": "resync", "jobId": job_id}))

    async def _dispatch_many(self, raws: list[bytes | str]) -> None:
        """_dispatch for many events, in order, with one batch read of the states they need."""
        assert self._load_states is not None
        wanted: list[tuple[str, dict[str, Any], bool]] = []
        for raw in raws:
            parsed = self._parse(raw)
            if parsed is None:
                continue
            job_id, event, deleted = parsed
            if any(b.wants(job_id, deleted) for b in self._mailboxes):
                wanted.append(parsed)
        to_load = sorted({job_id for job_id, _, deleted in wanted if not deleted})
        try:
            states = await self._load_states(to_load) if to_load else {}
        except Exception:
            log.warning(
                "live events: could not read the states of %d jobs; events skipped", len(to_load), exc_info=True
            )
            wanted = [w for w in wanted if w[2]]  # the deletions need no read
            states = {}
        for job_id, event, deleted in wanted:
            state = None if deleted else states.get(job_id)
            if state is not None and self._as_of_event is not None:
                try:
                    state = self._as_of_event(state, event)
                except Exception:
                    log.warning("live events: ignoring unreadable event %r", event, exc_info=True)
                    continue
            self._offer(Change(job_id=job_id, state=state))

    def _parse(self, raw: bytes | str) -> tuple[str, dict[str, Any], bool] | None:
        """(job id, event, deleted?) of a message, or None when it is malformed; forgets a deleted job's metrics."""
        try:
            event = json.loads(raw)
            job_id = str(event["jobId"])
        except (ValueError, KeyError, TypeError):
            log.warning("live events: ignoring malformed message %r", raw)
            return None
        deleted = event.get("event") == DELETED
        if deleted:
            # Whichever instance deleted it: this process's series of the job go too.
            metrics.job_deleted(job_id)
        return job_id, event, deleted

    def _offer(self, change: Change) -> None:
        for box in list(self._mailboxes):
            box.offer(change)

    async def _dispatch(self, raw: bytes | str) -> None:
        parsed = self._parse(raw)
        if parsed is None:
            return
        job_id, event, deleted = parsed
        if not any(b.wants(job_id, deleted) for b in self._mailboxes):
            return
        # One state read per event, shared by every subscriber of this process.
        try:
            state = None if deleted else await self._load_state(job_id)
            if state is not None and self._as_of_event is not None:
                state = self._as_of_event(state, event)
        except Exception:
            # The database is out for a moment: lose this event (the next one carries the state)
            # rather than end the hub, and every subscription of this process with it.
            log.warning("live events: could not read the state of %s; event skipped", job_id, exc_info=True)
            return
        self._offer(Change(job_id=job_id, state=state))
