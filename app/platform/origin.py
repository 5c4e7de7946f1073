"""Where the current operation came from (request id, client address), for the audit log.

Set by the transport for each request or websocket connection (app.api.middleware); read by the activity service
when it writes an entry. Nothing here knows HTTP: an operation with no origin (the engine's own, a CLI command
run in-process) leaves both null.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Origin:
    request_id: str | None
    client_address: str | None


NONE = Origin(None, None)
_current: contextvars.ContextVar[Origin] = contextvars.ContextVar("origin", default=NONE)


def current() -> Origin:
    return _current.get()


def enter(origin: Origin) -> contextvars.Token[Origin]:
    return _current.set(origin)


def leave(token: contextvars.Token[Origin]) -> None:
    _current.reset(token)
