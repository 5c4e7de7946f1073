"""How uvicorn serves the app: the limits of the settings (`jobs-gateway serve` and `run`)."""

from __future__ import annotations

from typing import Any

from app.adapters.uvicorn import HeaderTimeoutProtocol
from app.platform.config import Settings


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """uvicorn.run's keyword arguments for the app."""
    return {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level.lower(),
        "log_config": None,  # our logging (configured before), for uvicorn's own lines too
        # Without permessage-deflate a jobStatus event is one prepared frame written to every socket
        # (app.adapters.uvicorn); with it each socket compresses its own copy, for frames of a few hundred bytes.
        "ws_per_message_deflate": False,
        # The websocket library refuses a frame whose header announces more than this, before reading it (1009):
        # the app's own check of WS_MAX_MESSAGE_BYTES (app.api.body_limit) sees a message only once it is whole.
        "ws_max_size": settings.ws_max_message_bytes,
        "limit_concurrency": settings.http_max_concurrency,
        "timeout_keep_alive": settings.http_keep_alive_seconds,
        "http": HeaderTimeoutProtocol.with_timeout(settings.http_header_timeout_seconds),
    }
