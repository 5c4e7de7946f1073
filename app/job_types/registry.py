"""Job types: an async handler plus the pydantic model of its payload.

Types register themselves when their module is imported: the built-in ones from `workers.handlers`,
others from the modules named in JOB_TYPE_MODULES. The engine runs them through `run`, which the entry point
hands it.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from pydantic import BaseModel, ConfigDict

from app.engine import HandlerCall, RunLog
from app.platform.config import Settings
from app.platform.errors import Invalid
from app.platform.validation import validated


class Payload(BaseModel):
    """Base of every payload model: unknown fields are an error, and values are not coerced
    (`true` is not 1, `"30"` is not 30), so a typo never silently changes what a job does."""

    model_config = ConfigDict(extra="forbid", strict=True)


@dataclass(frozen=True)
class RunContext:
    """What a handler is called with. `log` keeps lines with the run (`ctx.log.info("fetched %d", n, page=3)`:
    the message, then its fields; those at RUN_LOG_PROCESS_LEVEL or above reach the process log too);
    `progress(done, total, note)` reports how far it is. Both are read live: the `runLog` subscription, `jobStatus`,
    `jobs-gateway jobs logs -f`."""

    job_id: str
    run_id: int
    payload: Any
    settings: Settings
    log: RunLog
    attempt: int = 1  # 1, then 2, 3… for the retries of a failed run (the job's `retry` policy)

    def progress(self, done: float, total: float | None = None, note: str | None = None) -> None:
        """`done` of `total` (None: not known), with an optional note; the latest report is the run's `progress`."""
        self.log.progress(done, total, note)


# A handler returns its run's one-line details (a string), or a JSON object: the run's `output`, whose `summary`
# (a string) is then the details.
Handler = Callable[[RunContext], Awaitable[str | dict[str, Any]]]
# Extra checks at job creation that need settings (e.g. an allow-list); raise ValueError to refuse.
Check = Callable[[Any, Settings], None]


@dataclass(frozen=True)
class JobType:
    name: str
    description: str
    handler: Handler
    payload_model: type[BaseModel] = Payload
    check: Check | None = None


_REGISTRY: dict[str, JobType] = {}


def register(job_type: JobType) -> JobType:
    _REGISTRY[job_type.name] = job_type
    return job_type


def job_type(
    name: str, description: str, payload_model: type[BaseModel] = Payload, check: Check | None = None
) -> Callable[[Handler], Handler]:
    """Decorator form of `register` for a handler function."""

    def wrap(handler: Handler) -> Handler:
        register(JobType(name=name, description=description, handler=handler, payload_model=payload_model, check=check))
        return handler

    return wrap


def get(name: str) -> JobType:
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise Invalid(f"Unknown job type '{name}'; known types: {known}", code="unknown_job_type") from None


def all_types() -> list[JobType]:
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


ENTRY_POINT_GROUP = "jobs_gateway.job_types"


def load(modules: Iterable[str]) -> None:
    """Import each module, then every installed package's `jobs_gateway.job_types` entry point;
    importing (or calling, for an entry point naming a function) registers their types."""
    for module in modules:
        importlib.import_module(module)
    for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        loaded = entry_point.load()
        if callable(loaded) and not isinstance(loaded, type):
            loaded()


async def run(call: HandlerCall) -> object:
    """Run a job's handler for the engine (app.engine hands every run here): its payload validated by the type's
    model, in the RunContext the handler expects."""
    job_type = get(call.type)
    ctx = RunContext(
        job_id=call.job_id,
        run_id=call.run_id,
        payload=job_type.payload_model.model_validate(call.payload),
        settings=call.settings,
        log=call.log,
        attempt=call.attempt,
    )
    return await job_type.handler(ctx)


def validate_payload(job_type: JobType, raw: object, settings: Settings) -> dict[str, Any]:
    """The payload with defaults applied, in its wire names; Invalid with per-field details otherwise."""
    payload = validated(job_type.payload_model, raw, what=f"payload for '{job_type.name}'", prefix="payload.")
    if job_type.check is not None:
        try:
            job_type.check(payload, settings)
        except ValueError as exc:
            raise Invalid(f"Invalid payload for '{job_type.name}': {exc}", code="payload_refused") from exc
    dumped: dict[str, Any] = payload.model_dump(mode="json", by_alias=True)
    return dumped
