"""An API process's one subscription to the run-log channel, handing each run's new lines to its followers here.

Messages are a hint, the database is the truth: a follower reads a run's lines from the database first, then takes
the lines messages bring, and goes back to the database whenever it may have missed one (the subscription was lost
and came back, its inbox overflowed, or the lines it got do not follow on from the last it has). So a follower
never misses a line and never sees one twice, whatever Redis drops.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from app.engine.runlog import LOG_CHANNEL
from app.platform.aio import cancel_and_wait, keep_listening

log = logging.getLogger(__name__)

# Messages an inbox holds for a follower that is behind; past this it is told to read the database instead.
INBOX_MESSAGES = 64


@dataclass(frozen=True, slots=True)
class News:
    """What a message told one run's followers: new lines (as on the wire), or that the run ended."""

    lines: list[dict[str, Any]]
    ended: bool


STALE = News([], False)  # messages may have been lost: read the database


@dataclass(eq=False)
class Inbox:
    run_id: int
    _items: deque[News] = field(default_factory=deque)
    _ready: asyncio.Event = field(default_factory=asyncio.Event)
    stale: bool = False

    def put(self, news: News) -> None:
        if len(self._items) >= INBOX_MESSAGES:
            self._items.clear()
            self.stale = True
        else:
            self._items.append(news)
        self._ready.set()

    def lost_messages(self) -> None:
        self._items.clear()
        self.stale = True
        self._ready.set()

    async def next(self, timeout: float) -> News | None:
        """The next news, STALE when some were lost, None when `timeout` passes without any."""
        while not self._items and not self.stale:
            self._ready.clear()
            try:
                await asyncio.wait_for(self._ready.wait(), timeout)
            except TimeoutError:
                return None
        if self.stale:
            self.stale = False
            self._items.clear()
            return STALE
        return self._items.popleft()


class LogFeed:
    def __init__(self, redis: Redis, retry_delay: float = 1.0) -> None:
        self._redis = redis
        self._retry_delay = retry_delay
        self._inboxes: dict[int, set[Inbox]] = {}
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="run-log-feed")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)

    def open(self, run_id: int) -> Inbox:
        inbox = Inbox(run_id)
        self._inboxes.setdefault(run_id, set()).add(inbox)
        if not self.connected.is_set():
            inbox.stale = True  # until the subscription is up, only the database can say what is new
        return inbox

    def close(self, inbox: Inbox) -> None:
        boxes = self._inboxes.get(inbox.run_id)
        if boxes is not None:
            boxes.discard(inbox)
            if not boxes:
                del self._inboxes[inbox.run_id]

    async def _run(self) -> None:
        await keep_listening(self._listen, what="run logs", retry_delay=self._retry_delay, on_lost=self._lost)

    def _lost(self) -> None:
        self.connected.clear()
        self._all_stale()

    async def _listen(self) -> None:
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(LOG_CHANNEL)
            self.connected.set()
            self._all_stale()  # what was published while it was down is only in the database
            while True:
                message = await pubsub.get_message(timeout=1.0)
                if message is not None:
                    self._dispatch(message["data"])
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]

    def _all_stale(self) -> None:
        for boxes in self._inboxes.values():
            for inbox in boxes:
                inbox.lost_messages()

    def _dispatch(self, raw: bytes | str) -> None:
        if not self._inboxes:
            return
        try:
            message = json.loads(raw)
            boxes = self._inboxes.get(int(message["runId"]))
        except (ValueError, KeyError, TypeError):
            log.warning("run logs: ignoring malformed message %r", raw[:200])
            return
        if not boxes:
            return
        lines = message.get("lines")
        news = News(lines if isinstance(lines, list) else [], message.get("end") is True)
        for inbox in boxes:
            inbox.put(news)
