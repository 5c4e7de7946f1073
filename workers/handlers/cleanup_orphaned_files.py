from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from app.data.app_tables import StoredFile
from app.job_types.registry import RunContext, job_type


def _orphans(root: Path, referenced: set[str], min_age: float) -> list[Path]:
    if not root.is_dir():
        return []
    cutoff = time.time() - min_age
    found = []
    for path in root.rglob("*"):
        # Symlinks are skipped so that a link can never make us delete outside FILES_DIR.
        if path.is_symlink() or not path.is_file():
            continue
        if path.relative_to(root).as_posix() not in referenced and path.stat().st_mtime < cutoff:
            found.append(path)
    return found


@job_type("cleanup_orphaned_files", "Removes files under FILES_DIR that no stored file record references")
async def cleanup_orphaned_files(ctx: RunContext) -> dict[str, Any]:
    root = ctx.settings.files_dir.resolve()
    referenced = {str(p) for p in await StoredFile.all().values_list("path", flat=True)}
    orphans = await asyncio.to_thread(_orphans, root, referenced, ctx.settings.orphan_min_age_seconds)
    ctx.log.info("found %d orphaned files under %s", len(orphans), root, referenced=len(referenced))
    # File system work stays off the event loop: a long scan must not starve the lease heartbeat.
    freed = await asyncio.to_thread(_delete, orphans)
    return {
        "summary": f"Deleted {len(orphans)} orphaned files ({freed} bytes)",
        "filesDeleted": len(orphans),
        "bytesFreed": freed,
    }


def _delete(paths: list[Path]) -> int:
    freed = 0
    for path in paths:
        freed += path.stat().st_size
        path.unlink(missing_ok=True)
    return freed
