"""Scheduled fires that do not produce a run, recorded with their reason (the `skipped_fire` table).

- `overlap`: the job was still running (its overlap policy `skip`, a second fire while one is buffered, or a
  `cancel_running` fire whose running run did not stop in time);
- `outside_catch_up_window`: it came due while no worker ran, longer ago than the job's catch-up window;
- `cancelled_by_policy`: it came due while no worker ran, within the window, and the catch-up policy did not run
  it (`latest` runs the latest one only, `none` runs none);
- `disabled`: the job was stopped while the fire was already on its way.

Missed fires are recorded as ranges (`count` instants from `fire_at` to `last_fire_at`), never one row per
instant: a week of downtime of an every-second job is two rows. Only fires that do not run are written, so a fire
that runs costs nothing here. The job's row keeps the last one (`last_skipped_at`, `last_skip_reason`), which the
job object shows and the `fire.skipped` event announces.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from tortoise import connections
from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.transactions import in_transaction

from app.engine import events
from app.engine.policy import LATEST, CatchUp
from app.platform import metrics
from app.platform.runtime import Runtime
from app.platform.schedule import Schedule
from app.platform.timefmt import iso_ms

log = logging.getLogger(__name__)

OVERLAP, OUTSIDE_WINDOW, BY_POLICY, DISABLED = "overlap", "outside_catch_up_window", "cancelled_by_policy", "disabled"
REASONS = (OVERLAP, OUTSIDE_WINDOW, BY_POLICY, DISABLED)
# A cron range's instants are counted one by one up to this many (an `@every` range is counted exactly).
MAX_COUNTED = 10_000
_US = timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class Skip:
    job_id: str
    fire_at: datetime
    reason: str
    last_fire_at: datetime | None = None  # a range's last instant (None: a single fire)
    count: int = 1

    @property
    def last(self) -> datetime:
        return self.last_fire_at or self.fire_at


@dataclass(frozen=True, slots=True)
class Missed:
    run_at: datetime | None  # the one missed fire the catch-up policy runs, if any
    skips: list[Skip]


def plan_missed(job_id: str, schedule: Schedule, first: datetime, now: datetime, catch_up: CatchUp) -> Missed:
    """The fires from `first` (a fire instant, included) to `now` that came due while no worker could start them:
    which one runs now, and the ranges that do not run, with their reason."""
    if first > now:
        return Missed(None, [])
    cutoff = now - timedelta(seconds=catch_up.window)
    latest = schedule.last_at_or_before(now)
    skips: list[Skip] = []
    recent_first = first
    if cutoff >= first:
        old_last = schedule.last_at_or_before(cutoff)
        if old_last >= first:
            skips.append(_range(job_id, schedule, first, old_last, OUTSIDE_WINDOW))
            recent_first = schedule.next_after(old_last)
    run_at = None
    if recent_first <= latest:
        if catch_up.policy == LATEST:
            run_at = latest
            if recent_first < latest:
                before = schedule.last_at_or_before(latest - _US)
                skips.append(_range(job_id, schedule, recent_first, before, BY_POLICY))
        else:
            skips.append(_range(job_id, schedule, recent_first, latest, BY_POLICY))
    return Missed(run_at, skips)


def _range(job_id: str, schedule: Schedule, first: datetime, last: datetime, reason: str) -> Skip:
    return Skip(job_id, first, reason, last if last != first else None, count_between(schedule, first, last))


def count_between(schedule: Schedule, first: datetime, last: datetime) -> int:
    """How many fires from `first` to `last`, both fire instants and included (at most MAX_COUNTED for cron)."""
    if schedule.every is not None:
        return (last - first) // schedule.every + 1
    count, fire = 1, first
    while count < MAX_COUNTED:
        fire = schedule.next_after(fire)
        if fire > last:
            break
        count += 1
    return count


def _marks(postgres: bool, first: int, count: int) -> str:
    return ", ".join(f"${i}" for i in range(first, first + count)) if postgres else ", ".join("?" * count)


async def write(conn: BaseDBAsyncClient, skips: Sequence[Skip], recorded_at: datetime) -> None:
    """Insert the records (a fire recorded before stays as it was) and move each job's last skipped fire, in the
    caller's transaction."""
    if not skips:
        return
    postgres = connections.get("default").capabilities.dialect == "postgres"
    rows: list[str] = []
    values: list[object] = []
    for skip in sorted(skips, key=lambda s: (s.job_id, s.fire_at)):
        rows.append(f"({_marks(postgres, len(values) + 1, 6)})")
        values += [skip.job_id, skip.fire_at, skip.last, skip.count, skip.reason, recorded_at]
    await conn.execute_query(
        "INSERT INTO skipped_fire (job_id, fire_at, last_fire_at, count, reason, recorded_at) "
        f"VALUES {', '.join(rows)} ON CONFLICT DO NOTHING",
        values,
    )
    newest: dict[str, Skip] = {}
    for skip in skips:
        if skip.job_id not in newest or skip.last >= newest[skip.job_id].last:
            newest[skip.job_id] = skip
    m = ["$1", "$2", "$3", "$4"] if postgres else ["?"] * 4
    sql = (
        f"UPDATE job SET last_skipped_at = {m[0]}, last_skip_reason = {m[1]} "
        f"WHERE id = {m[2]} AND (last_skipped_at IS NULL OR last_skipped_at <= {m[3]})"
    )
    for job_id in sorted(newest):
        skip = newest[job_id]
        await conn.execute_query(sql, [skip.last, skip.reason, job_id, skip.last])


async def announce(rt: Runtime, skips: Sequence[Skip]) -> None:
    """Count, log and publish recorded skips (best effort, like every event)."""
    if not skips:
        return
    announced: list[events.Event] = []
    for skip in skips:
        metrics.fires_skipped(skip.job_id, skip.reason, skip.count)
        what = f"fire {iso_ms(skip.fire_at)}" if skip.count == 1 else f"{skip.count} fires from {iso_ms(skip.fire_at)}"
        log.info("%s of %s not run: %s", what, skip.job_id, skip.reason)
        data = {"fireAt": iso_ms(skip.fire_at), "lastFireAt": iso_ms(skip.last), "count": skip.count}
        announced.append((events.FIRE_SKIPPED, skip.job_id, {**data, "reason": skip.reason}))
    await events.publish_all(rt.redis, announced)


async def record(rt: Runtime, skips: Sequence[Skip]) -> None:
    """Write and announce skips in a transaction of their own. Never raises: a skip that cannot be recorded is
    logged, and whatever decided it stands."""
    if not skips:
        return
    try:
        async with in_transaction() as conn:
            await write(conn, skips, rt.now())
    except Exception:
        log.exception("could not record %d skipped fires", len(skips))
        return
    await announce(rt, skips)
