"""A job type that only exists when a test names this module in JOB_TYPE_MODULES."""

from __future__ import annotations

from pydantic import Field

from app.job_types.registry import Payload, RunContext, job_type


class EchoPayload(Payload):
    text: str = Field(min_length=1)
    times: int = Field(default=1, ge=1, le=10)


@job_type("plugin_echo", "Repeats `text` `times` times (a plugin from outside jobs-gateway)", EchoPayload)
async def echo(ctx: RunContext) -> str:
    payload: EchoPayload = ctx.payload
    return " ".join([payload.text] * payload.times)
