"""What a service call needs besides its arguments: settings, the Redis pool and a clock."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from arq.connections import ArqRedis

from app.platform.config import Settings
from app.platform.timefmt import utcnow


class LocalRunner(Protocol):
    """A worker in this process that takes a trigger straight from the call that accepted it, without the
    dispatch list: the API's embedded worker (workers.dispatch.Consumer)."""

    async def reserve(self) -> bool:
        """Take a free slot for a run about to be accepted; False when there is none (the list it is)."""

    def release(self) -> None:
        """Give back a slot reserved for a run that was not accepted."""

    async def start(self, raw: bytes) -> None:
        """Run an accepted message in the reserved slot; returns once its handler has started (or the run
        ended before that). A worker stopping meanwhile frees the slot and queues the message for the others."""


@dataclass
class Runtime:
    settings: Settings
    redis: ArqRedis
    clock: Callable[[], datetime] = field(default=utcnow)
    # Set by the embedded worker while it takes runs (workers.dispatch); None in a process without one.
    local_runner: LocalRunner | None = None

    def now(self) -> datetime:
        return self.clock()
