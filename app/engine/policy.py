"""A job's run lifecycle policy, as the engine applies it: retries, overlap, catch-up and auto-pause.

Pure values and arithmetic; the job row stores them (app.data.jobs) and the jobs service validates what a client
sends (app.jobs.inputs). Defaults keep the behaviour every job had before policies existed: no retry, a fire
that finds its job running is skipped, a missed fire runs once if it is the latest within MISFIRE_GRACE_SECONDS,
and no auto-pause. (One change applies to every job: a fire claimed so late that the job's next fire is due too
gives way to the latest, where both used to run one after the other; app.engine.scheduler._plan_claim.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.data.jobs import Job
from app.platform.config import Settings

SKIP, BUFFER_ONE, CANCEL_RUNNING = "skip", "buffer_one", "cancel_running"
OVERLAPS = (SKIP, BUFFER_ONE, CANCEL_RUNNING)
LATEST, NONE = "latest", "none"
CATCH_UPS = (LATEST, NONE)

MAX_ATTEMPTS = 20
MAX_MULTIPLIER = 10.0
# A retry waits at most this long: its lease and its arq job are kept that long, and a longer wait is a schedule.
MAX_BACKOFF_SECONDS = 24 * 3600.0


@dataclass(frozen=True, slots=True)
class Retry:
    """Attempts of one run: the first plus up to `max_attempts - 1` retries, the n-th retry `backoff *
    multiplier ** (n - 1)` seconds after the attempt before it failed, at most `max_backoff`, shortened by up to
    `jitter` of itself at random (so that retries of many jobs failing together spread out, never later than
    the backoff says)."""

    max_attempts: int
    backoff: float
    max_backoff: float
    multiplier: float
    jitter: float

    def delay(self, failed_attempt: int, rand: float) -> float:
        """Seconds to wait after attempt `failed_attempt` failed; `rand` in [0, 1)."""
        base = min(self.max_backoff, self.backoff * self.multiplier ** (failed_attempt - 1))
        return base * (1.0 - self.jitter * rand)

    def allows_after(self, attempt: int) -> bool:
        return attempt < self.max_attempts

    def to_row(self) -> dict[str, Any]:
        return {
            "maxAttempts": self.max_attempts,
            "backoff": self.backoff,
            "maxBackoff": self.max_backoff,
            "multiplier": self.multiplier,
            "jitter": self.jitter,
        }

    @classmethod
    def from_row(cls, row: Any) -> Retry | None:
        if not isinstance(row, dict):
            return None
        return cls(
            max_attempts=int(row["maxAttempts"]),
            backoff=float(row["backoff"]),
            max_backoff=float(row["maxBackoff"]),
            multiplier=float(row["multiplier"]),
            jitter=float(row["jitter"]),
        )


@dataclass(frozen=True, slots=True)
class CatchUp:
    """A fire may start up to `window` seconds after its instant; after an outage, `latest` runs the latest
    fire missed within the window (once), `none` runs none of them."""

    window: float
    policy: str


def retry_of(job: Job) -> Retry | None:
    return Retry.from_row(job.retry)


def catch_up_of(job: Job, settings: Settings) -> CatchUp:
    window = job.catch_up_window_seconds
    return CatchUp(
        window=settings.misfire_grace_seconds if window is None else window,
        policy=job.catch_up_policy or LATEST,
    )


def overlap_of(job: Job) -> str:
    return job.overlap if job.overlap in OVERLAPS else SKIP
