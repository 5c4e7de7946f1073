"""What a slow live subscriber has not been sent yet: a few changes per job, oldest job first.

A subscriber that falls behind for a moment (a busy loop, a paused socket) must still see each change of
a job in order: a run that starts and ends while it is behind is two changes, not one. One that stays
behind must not cost memory without bound: past `PER_JOB` unsent changes of a job, the oldest goes,
so a stalled subscriber costs at most `PER_JOB` entries per job and is shown the newest when it reads.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

PER_JOB = 4

K = TypeVar("K")
T = TypeVar("T")


class Backlog(Generic[K, T]):
    def __init__(self, per_job: int = PER_JOB) -> None:
        self._per_job = per_job
        self._jobs: dict[K, deque[T]] = {}

    def __bool__(self) -> bool:
        return bool(self._jobs)

    def jobs(self) -> list[K]:
        return list(self._jobs)

    def unsent(self, job: K) -> list[T]:
        return list(self._jobs.get(job, ()))

    def push(self, job: K, item: T) -> bool:
        """Queue `item`; True when an older unsent item of the job was dropped to make room."""
        queue = self._jobs.get(job)
        if queue is None:
            self._jobs[job] = deque([item])
            return False
        dropped = len(queue) >= self._per_job
        if dropped:
            queue.popleft()
        queue.append(item)
        return dropped

    def pop(self) -> T:
        """The oldest unsent item of the job that has waited longest. IndexError when empty."""
        job = next(iter(self._jobs), None)
        if job is None:
            raise IndexError("empty backlog")
        queue = self._jobs[job]
        item = queue.popleft()
        if not queue:
            del self._jobs[job]
        return item
