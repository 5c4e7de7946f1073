from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from app.data.runs import Run, RunLogLine
from app.data.skipped_fires import SkippedFire
from app.job_types.registry import RunContext, job_type
from app.platform.timefmt import utcnow

# Small batches, each its own short transaction: a reader waiting on the database (the API sharing this
# process's SQLite connection, or a lock) waits for one batch at most, never for the whole prune.
BATCH_SIZE = 1000
# A run keeps up to RUN_LOG_MAX_LINES lines: its lines go in batches of their own, as small.
LINE_BATCH_SIZE = 5000


@job_type("cleanup_job_logs", "Removes job run logs and skipped-fire records older than RUN_RETENTION_DAYS")
async def cleanup_job_logs(ctx: RunContext) -> dict[str, Any]:
    days = ctx.settings.run_retention_days
    cutoff = utcnow() - timedelta(days=days)
    ctx.log.info("pruning what ended before %s", cutoff.isoformat(), retentionDays=days)
    # Open runs are never pruned, however old: the reaper closes them first.
    runs = await _prune(Run, {"completed_at__lt": cutoff}, ctx)
    skipped = await _prune(SkippedFire, {"recorded_at__lt": cutoff}, ctx)
    return {
        "summary": f"Deleted {runs} run logs and {skipped} skipped-fire records older than {days} days",
        "runsDeleted": runs,
        "skippedFiresDeleted": skipped,
        "retentionDays": days,
    }


async def _prune(model: type[Run] | type[SkippedFire], older: dict[str, Any], ctx: RunContext) -> int:
    deleted = 0
    while True:
        ids = await model.filter(**older).order_by("id").limit(BATCH_SIZE).values_list("id", flat=True)
        if not ids:
            return deleted
        if model is Run:
            await _prune_lines([int(i) for i in ids])  # type: ignore[call-overload]
        await model.filter(id__in=ids).delete()
        # Not delete()'s count: on SQLite tortoise reports more rows than the statement removed.
        deleted += len(ids)
        ctx.progress(deleted, note=f"{'runs' if model is Run else 'skipped fires'} deleted")
        await asyncio.sleep(0)  # let waiting queries in before the next batch


async def _prune_lines(run_ids: list[int]) -> None:
    """The log lines of these runs, before the runs: a line never outlives its run."""
    while line_ids := await RunLogLine.filter(run_id__in=run_ids).limit(LINE_BATCH_SIZE).values_list("id", flat=True):
        await RunLogLine.filter(id__in=line_ids).delete()
        await asyncio.sleep(0)
