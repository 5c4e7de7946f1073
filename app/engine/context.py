"""What a worker's arq functions and hooks share, typed: arq hands them a dict (`ctx`), which holds this."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from app.engine.runner import RunHandler
from app.platform.runtime import Runtime

if TYPE_CHECKING:
    from app.engine.cancels import Listener
    from app.engine.consumer import Consumer
    from app.engine.metrics_server import WorkerMetricsServer

KEY = "jobs_gateway"


@dataclass(eq=False)
class WorkerContext:
    rt: Runtime
    run_handler: RunHandler
    embedded: bool  # inside an API process, whose own triggers it takes directly
    consumer: Consumer | None = None
    cancel_listener: Listener | None = None
    # A standalone worker's own: its safety-net loops, its /metrics server, the collector settings it replaced.
    loops: list[asyncio.Task[None]] = field(default_factory=list)
    metrics_server: WorkerMetricsServer | None = None
    gc_thresholds: tuple[int, int, int] | None = None


def of(ctx: dict[str, Any]) -> WorkerContext:
    worker: WorkerContext = ctx[KEY]
    return worker
