"""The README's promise at the default settings: a run whose worker is killed (SIGKILL) is closed as `error` /
`worker lost`, and its job shows `running: false`, within 20 s, whichever way the run started (a trigger or a
scheduled fire) and wherever it ran (a standalone worker, or an API's embedded worker).

Every timing is the default one (LEASE_TTL_SECONDS 15, HEARTBEAT_SECONDS 5, ...): the other worker-loss tests
shorten them to stay fast, these keep them. The run closes about LEASE_TTL_SECONDS after the worker's last
renewal: a surviving process's reaper looks again right after a lease it saw held expires.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from app.data.runs import Run
from app.platform.config import Settings
from app.platform.runtime import Runtime
from tests.conftest import make_token
from tests.factories import make_job, wait_until
from tests.support.processes import ApiProcess, WorkerProcess, _Process
from tests.support.servers import free_port

pytestmark = [pytest.mark.slow, pytest.mark.serial]

PROMISE_SECONDS = 20.0  # README, "Losing a worker"
TIMINGS = (
    "lease_ttl_seconds heartbeat_seconds queued_lease_ttl_seconds worker_poll_delay worker_idle_poll_seconds "
    "fire_lead_seconds reconcile_interval_seconds misfire_grace_seconds shutdown_grace_seconds job_timeout_seconds"
).split()


def at_defaults(settings_factory: Callable[..., Settings], **overrides: object) -> Settings:
    """The test's database and Redis, with every engine timing at its default."""
    defaults = {name: Settings.model_fields[name].default for name in TIMINGS}
    return settings_factory(**{**defaults, **overrides})


async def _started(job_id: str) -> Run:
    async def open_run() -> bool:
        return await Run.filter(job_id=job_id, completed_at__isnull=True).exists()

    await wait_until(open_run, timeout=30)
    return await Run.get(job_id=job_id, completed_at__isnull=True)


async def _kill_and_time_the_loss(doomed: _Process, observer: ApiProcess, run: Run, settings: Settings) -> float:
    """SIGKILL `doomed` while `run` runs on it; how long until `observer` says the job is not running and the
    run is closed as lost."""
    auth = {"Authorization": f"Bearer {make_token(settings)}"}
    async with observer.client(headers=auth) as client:
        assert (await client.get(f"/api/jobs/{run.job_id}")).json()["running"] is True
        await asyncio.sleep(1.0)  # mid-run: past the start, between two renewals
        doomed.signal(signal.SIGKILL)
        doomed.wait(10)
        killed = time.monotonic()

        async def lost() -> bool:
            job = (await client.get(f"/api/jobs/{run.job_id}")).json()
            await run.refresh_from_db()
            return job["running"] is False and run.completed_at is not None

        await wait_until(lost, timeout=PROMISE_SECONDS + 10, interval=0.2)
        took = time.monotonic() - killed
    assert (run.result, run.details) == ("error", "worker lost")
    print(f"{run.triggered_by} run on {doomed.name}: closed as worker lost {took:.1f} s after SIGKILL")
    return took


async def _blocking_job(kind: str, job_id: str) -> None:
    """A job that runs until it is cancelled: started by a trigger, or by its schedule (made before the processes
    start, which schedule it as they start)."""
    if kind == "trigger":
        await make_job(id=job_id, type="test_block", enabled=False)
    else:
        await make_job(id=job_id, type="test_block", schedule="@every 5s")


async def _start_run(kind: str, job_id: str, api: ApiProcess, settings: Settings) -> Run:
    """The job's run, triggered on `api` or fired on its schedule."""
    if kind == "trigger":
        async with api.client(headers={"Authorization": f"Bearer {make_token(settings)}"}) as client:
            assert (await client.post(f"/api/jobs/{job_id}/trigger")).status_code == 200
    run = await _started(job_id)
    assert run.triggered_by == ("scheduler" if kind == "fire" else "user:5")
    return run


@pytest.mark.parametrize("kind", ["trigger", "fire"])
async def test_a_run_on_a_killed_standalone_worker(
    settings_factory: Callable[..., Settings], orm: Runtime, tmp_path: Path, kind: str
) -> None:
    settings = at_defaults(settings_factory, embedded_worker=False)
    await _blocking_job(kind, f"{kind}-away")
    with ApiProcess(settings, tmp_path, free_port()) as api, WorkerProcess(settings, tmp_path, "worker") as worker:
        run = await _start_run(kind, f"{kind}-away", api, settings)
        assert await _kill_and_time_the_loss(worker, api, run, settings) <= PROMISE_SECONDS


@pytest.mark.parametrize("kind", ["trigger", "fire"])
async def test_a_run_on_a_killed_apis_embedded_worker(
    settings_factory: Callable[..., Settings], orm: Runtime, tmp_path: Path, kind: str
) -> None:
    doomed_settings = at_defaults(settings_factory, embedded_worker=True)
    observer_settings = at_defaults(settings_factory, embedded_worker=False)
    await _blocking_job(kind, f"{kind}-here")
    with (
        ApiProcess(doomed_settings, tmp_path, free_port(), name="doomed-api") as doomed,
        ApiProcess(observer_settings, tmp_path, free_port(), name="observer-api") as observer,
    ):
        run = await _start_run(kind, f"{kind}-here", doomed, doomed_settings)
        assert await _kill_and_time_the_loss(doomed, observer, run, observer_settings) <= PROMISE_SECONDS
