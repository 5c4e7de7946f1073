"""The worker definition: which job types a worker runs, and what it does once its database is up.

The engine (app.engine) builds and runs the arq workers themselves: a standalone one (`jobs-gateway worker`)
calls `prepare` as it starts, and an API process (app.main) calls it before it starts its embedded worker.
`arq workers.WorkerSettings` (arq's own CLI) is refused: arq's stock Worker cannot share its slots with triggers
nor sleep until there is work, and neither is reachable through arq's public API (workers/__init__.py).
"""

from __future__ import annotations

from app.engine import RunHandler
from app.job_types import registry
from app.jobs import service as jobs_service
from app.platform.config import Settings
from app.platform.runtime import Runtime

# The built-in job types, one module each; JOB_TYPE_MODULES adds more.
BUILTIN_HANDLERS = "workers.handlers"

ARQ_CLI_REFUSED = (
    "jobs-gateway: `arq workers.WorkerSettings` is not supported (arq's own Worker cannot share its slots with "
    "triggers); run `jobs-gateway worker` instead"
)


def load_job_types(settings: Settings) -> None:
    registry.load([BUILTIN_HANDLERS, *settings.job_type_modules])


async def prepare(rt: Runtime) -> RunHandler:
    """A worker's start-up once its database is connected: the job types loaded, the built-in jobs registered.
    Returns how the engine runs a job type's handler."""
    load_job_types(rt.settings)
    await jobs_service.register_builtin_jobs()
    return registry.run
