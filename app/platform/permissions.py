"""Who may do what: the one table REST routes, GraphQL fields and subscriptions all enforce.

`settings.update` (the Jobs API reference's permission) grants every operation, so every client of the
reference works unchanged. The finer claims split it: `jobs.read` to look (lists, logs, activity, previews,
subscriptions), `jobs.trigger` to run and cancel, `jobs.write` to change (create, edit, enable/disable,
start/stop, delete). Operations are named as their GraphQL root fields; a REST route names its twin.
"""

from __future__ import annotations

from collections.abc import Set

from app.platform.errors import Forbidden

READ, TRIGGER, WRITE, ADMIN = "jobs.read", "jobs.trigger", "jobs.write", "settings.update"
GRANTED = (READ, TRIGGER, WRITE, ADMIN)  # a token with none of these may do nothing here

REQUIRED: dict[str, str] = {
    # Reads.
    "jobs": READ,
    "job": READ,
    "jobLogs": READ,
    "allJobLogs": READ,
    "run": READ,
    "runLog": READ,
    "skippedFires": READ,
    "nextFires": READ,
    "schedulePreview": READ,
    "activity": READ,
    "jobTypes": READ,
    "jobStatus": READ,
    "jobDeleted": READ,
    "activityAdded": READ,
    # Runs.
    "triggerJob": TRIGGER,
    "cancelJobRun": TRIGGER,
    # Changes.
    "createJob": WRITE,
    "updateJob": WRITE,
    "deleteJob": WRITE,
    "startJob": WRITE,
    "stopJob": WRITE,
}


def required(operation: str) -> str:
    """The permission an operation needs; one missing from the table needs settings.update (fail closed)."""
    return REQUIRED.get(operation, ADMIN)


def allows(granted: Set[str], operation: str) -> bool:
    return ADMIN in granted or required(operation) in granted


class PermissionMissing(Forbidden):
    def __init__(self, permission: str) -> None:
        also = "" if permission == ADMIN else f" (or '{ADMIN}', which grants every permission)"
        super().__init__(f"Permission '{permission}' is required{also}")
        self.permission = permission


def check(granted: Set[str], operation: str) -> None:
    """PermissionMissing (a Forbidden naming the permission) unless `granted` allows the operation."""
    if not allows(granted, operation):
        raise PermissionMissing(required(operation))
