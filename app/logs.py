"""Logging set-up: one place, driven by LOG_LEVEL and LOG_FORMAT (see app.observability.log_config)."""

from __future__ import annotations

from app.observability.log_config import configure_logging

__all__ = ["configure_logging"]
