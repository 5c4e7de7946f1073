"""A job's ETag and `If-Match`: optimistic concurrency over HTTP.

The ETag is the job's configuration version (`"<version>"`, strong): it changes with every change of what a
client set (an edit, enable/disable, auto-pause) and never with a run, so a PATCH guarded by `If-Match` fails
only when somebody else changed the job, not because it ran meanwhile.
"""

from __future__ import annotations

import re

from app.platform.errors import PreconditionFailed

_TAG = re.compile(r'\s*"(\d{1,18})"\s*')


def etag(version: int) -> str:
    return f'"{version}"'


def expected_version(if_match: str | None) -> int | None:
    """The version an `If-Match` header requires; None when there is none, or it is `*` (any version).

    One strong ETag is what a client that read the job sends. Anything else (a weak tag, a list, a malformed
    value) cannot match a strong tag under RFC 9110's strong comparison: 412."""
    if if_match is None or if_match.strip() == "*":
        return None
    match = _TAG.fullmatch(if_match)
    if match is None:
        raise PreconditionFailed(
            f'If-Match must be one ETag as GET /api/jobs/{{jobId}} answers it (such as "3"), got {if_match[:80]!r}'
        )
    return int(match.group(1))
