"""`send_notifications`: delivers the pending messages of the notification outbox.

Each message goes to a sender: the callable named by NOTIFICATION_SENDER ("module:function", async or
sync, called with the template name and the Notification), else one that appends a JSON line per
message to NOTIFICATIONS_LOG. A message is marked sent only after its sender returned, so delivery is
at least once: a run that dies between the two sends that message again next time.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import inspect
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ConfigDict, Field
from tortoise.expressions import F

from app.data.app_tables import Notification
from app.job_types.registry import Payload, RunContext, job_type
from app.platform.config import Settings
from app.platform.timefmt import utcnow

# Called with (template, notification); may return an awaitable, which is awaited.
Sender = Callable[[str, Notification], object]


class SendNotificationsPayload(Payload):
    model_config = ConfigDict(populate_by_name=True)

    template: str = Field(min_length=1, description="Name of the template the sender renders the messages with")
    batch_size: int = Field(default=100, ge=1, le=10_000, alias="batchSize", description="Messages loaded per query")


def _append_line(path: Path, line: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(line + "\n")


async def log_sender(log_path: Path, template: str, notification: Notification) -> None:
    """The default sender: one JSON line per message in `log_path`."""
    line = json.dumps(
        {
            "template": template,
            "recipient": notification.recipient,
            "subject": notification.subject,
            "body": notification.body,
            "id": notification.id,
        },
        ensure_ascii=False,
    )
    await asyncio.to_thread(_append_line, log_path, line)


def resolve_sender(settings: Settings) -> Sender:
    """NOTIFICATION_SENDER imported, or the log sender writing to NOTIFICATIONS_LOG."""
    spec = settings.notification_sender
    if not spec:
        return functools.partial(log_sender, settings.notifications_log)
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"NOTIFICATION_SENDER must be 'module:function', got {spec!r}")
    try:
        target: object = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"NOTIFICATION_SENDER {spec!r}: cannot import {module_name!r}: {exc}") from exc
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ValueError(f"NOTIFICATION_SENDER {spec!r}: {module_name!r} has no {attr!r}") from None
    if not callable(target):
        raise ValueError(f"NOTIFICATION_SENDER {spec!r} is not callable")
    sender: Sender = target
    return sender


async def _deliver(sender: Sender, template: str, notification: Notification) -> None:
    result: object
    if inspect.iscoroutinefunction(sender):
        result = sender(template, notification)
    else:
        # A synchronous sender (SMTP, a blocking client) must not stall the event loop, and with it
        # the run's lease heartbeat.
        result = await asyncio.to_thread(sender, template, notification)
    if inspect.isawaitable(result):
        await result


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]


@job_type(
    "send_notifications",
    "Sends the pending notifications of the outbox, oldest first, in batches of `batchSize`",
    SendNotificationsPayload,
)
async def send_notifications(ctx: RunContext) -> dict[str, Any]:
    payload: SendNotificationsPayload = ctx.payload
    sender = resolve_sender(ctx.settings)
    sent = failed = 0
    first_error = ""
    last_id = 0
    # Keyset pages by id: a message that failed stays pending but is not picked up again in this run.
    while True:
        batch = await Notification.filter(sent_at=None, id__gt=last_id).order_by("id").limit(payload.batch_size)
        if not batch:
            break
        for notification in batch:
            last_id = notification.id
            try:
                await _deliver(sender, payload.template, notification)
            except Exception as exc:
                failed += 1
                first_error = first_error or f"#{notification.id}: {_one_line(exc)}"
                ctx.log.warning("notification %s failed", notification.id, exc_info=True)
                await Notification.filter(id=notification.id).update(attempts=F("attempts") + 1)
                continue
            await Notification.filter(id=notification.id).update(sent_at=utcnow())
            sent += 1
        ctx.progress(sent + failed, note=f"{sent} sent, {failed} failed")
        if len(batch) < payload.batch_size:
            break
    if failed and not sent:
        raise RuntimeError(f"All {failed} notifications failed (first: {first_error})")
    summary = f"Sent {sent} notifications with template '{payload.template}'"
    if failed:
        summary += f", {failed} failed (first: {first_error})"
    return {"summary": summary, "sent": sent, "failed": failed, "template": payload.template}
