from __future__ import annotations

import asyncio
import os
import stat
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
    deleted, freed = await asyncio.to_thread(_delete, root, orphans)
    return {
        "summary": f"Deleted {deleted} orphaned files ({freed} bytes)",
        "filesDeleted": deleted,
        "bytesFreed": freed,
    }


def _delete(root: Path, paths: list[Path]) -> tuple[int, int]:
    """Unlink each path under `root`, walking down from a descriptor of `root` one directory at a time without
    following links: a directory swapped for a symlink after the scan (to send the delete elsewhere) stops that
    path's deletion instead. How many files it deleted, and their bytes."""
    if not paths:
        return 0, 0
    deleted = freed = 0
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    root_fd = os.open(root, flags)
    try:
        for path in paths:
            *folders, name = path.relative_to(root).parts
            fds = [root_fd]
            try:
                for folder in folders:
                    fds.append(os.open(folder, flags, dir_fd=fds[-1]))
                info = os.stat(name, dir_fd=fds[-1], follow_symlinks=False)
                if stat.S_ISREG(info.st_mode):
                    os.unlink(name, dir_fd=fds[-1])
                    deleted += 1
                    freed += info.st_size
            except OSError:
                continue  # gone, or no longer a plain file in a plain folder under root: left alone
            finally:
                for fd in fds[1:]:
                    os.close(fd)
    finally:
        os.close(root_fd)
    return deleted, freed
