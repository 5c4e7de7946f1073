"""Job types: an async handler plus the pydantic model of its payload.

Types register themselves when their module is imported: the built-in ones from `workers.handlers`,
others from the modules named in JOB_TYPE_MODULES.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict

from app.config import Settings
from app.errors import Invalid


class Payload(BaseModel):
    """Base of every payload model: unknown fields are an error, not silently dropped."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class RunContext:
    job_id: str
    run_id: int
    payload: Any
    settings: Settings
    log: logging.Logger


Handler = Callable[[RunContext], Awaitable[str]]


@dataclass(frozen=True)
class JobType:
    name: str
    description: str
    handler: Handler
    payload_model: type[BaseModel] = Payload


_REGISTRY: dict[str, JobType] = {}


def register(job_type: JobType) -> JobType:
    _REGISTRY[job_type.name] = job_type
    return job_type


def job_type(name: str, description: str, payload_model: type[BaseModel] = Payload) -> Callable[[Handler], Handler]:
    """Decorator form of `register` for a handler function."""

    def wrap(handler: Handler) -> Handler:
        register(JobType(name=name, description=description, handler=handler, payload_model=payload_model))
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


def load(modules: Iterable[str]) -> None:
    """Import each module; importing registers its types."""
    for module in modules:
        importlib.import_module(module)
