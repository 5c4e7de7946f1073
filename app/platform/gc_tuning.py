"""Garbage-collector settings for a serving process.

CPython's cyclic collector runs a young-generation pass once allocations outrun deallocations by
700 objects. A request suspended at an await (a Redis reply, a database read) keeps its objects
alive, so with 50 requests in flight every pass finds them all alive and promotes them; the older
generations then fill up and the full collections walk the whole heap of FastAPI, pydantic,
tortoise and strawberry objects (about 340,000 after start-up) for some 150 ms each. Measured on
`GET /api/jobs` at 50 connections (B3): a quarter of the process's CPU went to the collector, which
is why throughput fell as connections grew (about 780 req/s at 4 connections, 510 at 50). With
the start-up heap frozen out of the collector's reach and a young generation of 10,000 objects,
the collector's share fell below 1 % and 50 connections served as many requests as 4.
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger(__name__)

# Net allocations (allocations minus deallocations) that start a young-generation pass. Requests
# free nearly all they allocate, so this is reached mostly by what requests in flight hold.
GEN0_THRESHOLD = 10_000


def tune_for_serving() -> tuple[int, int, int]:
    """Freeze what start-up allocated and raise the young-generation threshold; returns the previous
    thresholds for `restore`. Call once the application has started."""
    previous = gc.get_threshold()
    # No gc.collect() first: start-up leaves little garbage, and a forced collection here would run
    # finalizers (ResourceWarnings) of whatever an earlier app in the same process left behind.
    gc.freeze()
    gc.set_threshold(max(GEN0_THRESHOLD, previous[0]), previous[1], previous[2])
    # Logged so that an operator (and a process test) can see that a serving process took the settings.
    log.info(
        "garbage collector tuned: %d start-up objects frozen, thresholds %s", gc.get_freeze_count(), gc.get_threshold()
    )
    return previous


def restore(previous: tuple[int, int, int]) -> None:
    """Undo `tune_for_serving` (a process that starts and stops apps, such as the test suite)."""
    gc.set_threshold(*previous)
    gc.unfreeze()
