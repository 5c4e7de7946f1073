"""A job's ETag and `If-Match`: optimistic concurrency over HTTP.

The ETag is the job's configuration version (`"<version>"`, strong): it changes with every change of what a
client set (an edit, enable/disable, auto-pause) and never with a run, so a PATCH guarded by `If-Match` fails
only when somebody else changed the job, not because it ran meanwhile.
"""

from __future__ import annotations

import re

from app.platform.errors import PreconditionFailed

_TAG = re.compile(r'\s*"(\d{1,18})"\s*')
_ANY_TAG = re.compile(r'\s*(?:W/)?"[^"]*"\s*')


def etag(version: int) -> str:
    return f'"{version}"'


def expected_versions(if_match: str | None) -> frozenset[int] | None:
    """The versions an `If-Match` header accepts (a list of ETags: any of them); None when there is none, or it
    is `*` (any version).

    Only strong ETags of ours can match (RFC 9110's strong comparison): a weak tag, or a tag of another form,
    in the list matches nothing; a header that is not a list of entity tags at all is refused with 412 too."""
    if if_match is None or if_match.strip() == "*":
        return None
    tags = if_match.split(",")
    if not all(_ANY_TAG.fullmatch(tag) for tag in tags):
        raise PreconditionFailed(
            f'If-Match must be ETags as GET /api/jobs/{{jobId}} answers them (such as "3"), got {if_match[:80]!r}'
        )
    return frozenset(int(m.group(1)) for tag in tags if (m := _TAG.fullmatch(tag)) is not None)
