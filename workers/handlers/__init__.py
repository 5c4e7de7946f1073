"""Built-in job types; importing this package registers them."""

from workers.handlers import (
    cleanup_expired_listings,
    cleanup_expired_tokens,
    cleanup_job_logs,
    cleanup_orphaned_files,
    http_request,
    metadata_sync,
    send_notifications,
    update_search_index,
)

__all__ = [
    "cleanup_expired_listings",
    "cleanup_expired_tokens",
    "cleanup_job_logs",
    "cleanup_orphaned_files",
    "http_request",
    "metadata_sync",
    "send_notifications",
    "update_search_index",
]
