"""Built-in job types; importing this package registers them."""

from workers.handlers import cleanup_expired_tokens, cleanup_job_logs, cleanup_orphaned_files, metadata_sync

__all__ = ["cleanup_expired_tokens", "cleanup_job_logs", "cleanup_orphaned_files", "metadata_sync"]
