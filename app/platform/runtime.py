"""What a service call needs besides its arguments: settings, the Redis pool and a clock."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from arq.connections import ArqRedis

from app.platform.config import Settings
from app.platform.timefmt import utcnow


@dataclass(eq=False)  # compared (and hashed) by identity: the engine keeps per-runtime state keyed by it
class Runtime:
    settings: Settings
    redis: ArqRedis
    clock: Callable[[], datetime] = field(default=utcnow)

    def now(self) -> datetime:
        return self.clock()
