"""The jobs every installation has, registered at start-up (see the Jobs API's "Common Jobs")."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BuiltinJob:
    id: str
    name: str
    description: str
    type: str
    schedule: str


BUILTIN_JOBS = (
    BuiltinJob(
        "metadata-sync",
        "Metadata Sync",
        "Synchronizes game metadata from external sources",
        "metadata_sync",
        "0 */6 * * *",
    ),
    BuiltinJob(
        "cleanup-expired-tokens",
        "Cleanup Expired Tokens",
        "Removes expired refresh tokens from database",
        "cleanup_expired_tokens",
        "0 0 * * *",
    ),
    BuiltinJob(
        "cleanup-orphaned-files",
        "Cleanup Orphaned Files",
        "Removes orphaned game files",
        "cleanup_orphaned_files",
        "0 0 * * 0",
    ),
    BuiltinJob(
        "cleanup-job-logs",
        "Cleanup Job Logs",
        "Removes job run logs older than the retention period",
        "cleanup_job_logs",
        "30 0 * * *",
    ),
)
