"""Structured logs: structlog renders every record, ours and the standard library's (uvicorn, arq,
tortoise), as one JSON object per line, or as readable console lines on a terminal.

Context travels in contextvars, so whatever is bound where a request or a run begins (request id,
user, job id, run id) appears on every line logged inside it, including uvicorn's access line.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog
from structlog.typing import Processor

from app.platform.config import Settings

# Loggers that libraries configure with their own handlers; theirs are removed so that every line
# goes through the root handler and its formatter.
LIBRARY_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "arq", "arq.worker", "arq.jobs")


class _Ours(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler this module installs, so that configuring twice replaces it."""


def use_json(log_format: str, stream: TextIO) -> bool:
    if log_format == "auto":
        return not stream.isatty()
    return log_format == "json"


def _shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


def configure_logging(settings: Settings, stream: TextIO | None = None) -> None:
    """Route the standard library and structlog through one formatter at LOG_LEVEL."""
    out = stream or sys.stderr
    as_json = use_json(settings.log_format, out)
    final: list[Processor] = [structlog.stdlib.ProcessorFormatter.remove_processors_meta]
    if as_json:
        # `message` rather than structlog's `event`: the key log shippers look for.
        final += [
            structlog.processors.format_exc_info,
            structlog.processors.EventRenamer("message"),
            structlog.processors.JSONRenderer(),
        ]
    else:
        final.append(structlog.dev.ConsoleRenderer(colors=out.isatty()))
    handler = _Ours(out)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(foreign_pre_chain=_shared_processors(), processors=final))

    root = logging.getLogger()
    for mine in [h for h in root.handlers if isinstance(h, _Ours)]:
        root.removeHandler(mine)
        mine.close()
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    for name in LIBRARY_LOGGERS:
        library = logging.getLogger(name)
        if not library.handlers and not library.propagate:
            continue  # silenced on purpose (`uvicorn --no-access-log`)
        for old in list(library.handlers):
            library.removeHandler(old)
        library.propagate = True
        library.setLevel(logging.NOTSET)  # LOG_LEVEL governs, not the level uvicorn or arq set
    # A dictConfig run earlier (arq's CLI runs one) disables every logger that existed then, which
    # includes each module's `logging.getLogger(__name__)`: they would log nothing.
    for existing in logging.root.manager.loggerDict.values():
        if isinstance(existing, logging.Logger):
            existing.disabled = False

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *_shared_processors(),
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def bind(**values: Any) -> None:
    """Add keys to every line logged from here on in this context (a request, a run)."""
    structlog.contextvars.bind_contextvars(**values)
