from __future__ import annotations

from typing import Any

from app.data.app_tables import RefreshToken
from app.job_types.registry import RunContext, job_type
from app.platform.timefmt import utcnow


@job_type("cleanup_expired_tokens", "Removes expired refresh tokens from the database")
async def cleanup_expired_tokens(ctx: RunContext) -> dict[str, Any]:
    deleted = await RefreshToken.filter(expires_at__lt=utcnow()).delete()
    return {"summary": f"Deleted {deleted} expired refresh tokens", "deleted": deleted}
