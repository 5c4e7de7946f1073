from __future__ import annotations

from datetime import timedelta

from app.job_types.registry import RunContext, job_type
from app.runs.models import Run
from app.timefmt import utcnow


@job_type("cleanup_job_logs", "Removes job run logs older than RUN_RETENTION_DAYS")
async def cleanup_job_logs(ctx: RunContext) -> str:
    days = ctx.settings.run_retention_days
    # Open runs are never pruned, however old: the reaper closes them first.
    deleted = await Run.filter(completed_at__lt=utcnow() - timedelta(days=days)).delete()
    return f"Deleted {deleted} run logs older than {days} days"
