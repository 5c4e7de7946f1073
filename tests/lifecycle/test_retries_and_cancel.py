"""Retries, auto-pause and cancel with real worker processes (`jobs-gateway worker`), at the default lease timings.

The test process plays the API: it creates, triggers and cancels through the services, as a route would.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path

import pytest

from app.data.activity import Activity
from app.data.jobs import Job
from app.jobs import service as jobs_service
from app.platform.config import Settings
from app.platform.errors import Conflict
from app.platform.runtime import Runtime
from app.runs import service as runs_service
from tests.factories import wait_until
from tests.lifecycle.support import ACTOR, create, engine_settings, is_running, runs_of, wait_for_runs
from tests.support.processes import WorkerProcess

pytestmark = [pytest.mark.slow, pytest.mark.serial]


@pytest.fixture
def rt(settings_factory: Callable[..., Settings], orm: Runtime) -> Runtime:
    # One worker slot: a retry's backoff must leave it free for other work.
    return Runtime(settings=engine_settings(settings_factory, worker_max_jobs=1), redis=orm.redis)


async def test_a_handler_failing_twice_runs_three_attempts_after_their_backoff_without_holding_a_slot(
    rt: Runtime, tmp_path: Path
) -> None:
    retry = {"maxAttempts": 3, "backoff": "1s", "multiplier": 1.5}
    await create(rt, id="flaky", type="test_flaky", payload={"fail_attempts": 2}, retry=retry)
    await create(rt, id="other", type="test_sleep", payload={"seconds": 0.3})
    with WorkerProcess(rt.settings, tmp_path):
        await runs_service.trigger(rt, job_id="flaky", actor=ACTOR)
        await wait_for_runs("flaky", 1)
        # Between attempts the job is running: a trigger is refused, as while a handler runs.
        assert await is_running(rt, "flaky")
        with pytest.raises(Conflict) as refused:
            await runs_service.trigger(rt, job_id="flaky", actor=ACTOR)
        assert refused.value.code == "already_running"
        await runs_service.trigger(rt, job_id="other", actor=ACTOR)  # needs the one worker slot
        runs = await wait_for_runs("flaky", 3)
        await wait_until(lambda: _idle(rt, "flaky"), timeout=5)
    assert [(r.attempt, r.result) for r in runs] == [(1, "error"), (2, "error"), (3, "success")]
    assert [r.details for r in runs] == ["attempt 1 failed", "attempt 2 failed", "attempt 3 succeeded"]
    assert {(r.triggered_by, r.fire_at) for r in runs} == {(ACTOR, None)}  # one story: the same trigger
    waits = [(b.started_at - a.completed_at).total_seconds() for a, b in pairwise(runs) if a.completed_at]
    print(f"waits between attempts: {waits}")
    for wait, backoff in zip(waits, [1.0, 1.5], strict=True):
        assert backoff - 0.002 <= wait < backoff + 0.1  # arq's due times are whole milliseconds
    state = await jobs_service.get(rt, job_id="flaky")
    assert (state.job.last_result, state.job.consecutive_failures, state.running) == ("success", 0, False)
    # The one worker slot ran the other job while the retry waited out its backoff.
    [other] = await runs_of("other")
    assert runs[0].completed_at is not None and other.completed_at is not None
    assert runs[0].completed_at < other.started_at and other.completed_at < runs[1].started_at


async def _idle(rt: Runtime, job_id: str) -> bool:
    return not await is_running(rt, job_id)


async def test_exhausted_retries_end_in_error_and_two_such_fires_pause_the_job(rt: Runtime, tmp_path: Path) -> None:
    retry = {"maxAttempts": 2, "backoff": "200ms"}
    await create(rt, id="doomed", type="test_fail", schedule="@every 2s", retry=retry, pauseAfterFailures=2)
    with WorkerProcess(rt.settings, tmp_path):

        async def paused() -> bool:
            return not (await Job.get(id="doomed")).enabled

        await wait_until(paused, timeout=20, interval=0.05)
        await asyncio.sleep(2.5)  # a fire would have come by now: none does
    runs = await runs_of("doomed")
    assert [(r.attempt, r.result) for r in runs] == [(1, "error"), (2, "error")] * 2
    assert runs[0].fire_at == runs[1].fire_at != runs[2].fire_at == runs[3].fire_at
    job = await Job.get(id="doomed")
    assert (job.enabled, job.consecutive_failures, job.last_result, job.next_run_at) == (False, 2, "error", None)
    [entry] = await Activity.filter(event="jobs.auto_pause")
    assert (entry.job_id, entry.actor, entry.details["consecutiveFailures"]) == ("doomed", "system", 2)
    assert entry.details["runId"] == runs[3].id
    # Enabling it again starts the count afresh.
    await jobs_service.start(rt, job_id="doomed", actor=ACTOR)
    assert (await Job.get(id="doomed")).consecutive_failures == 0


async def test_cancel_stops_a_run_on_another_worker_process_within_a_second(rt: Runtime, tmp_path: Path) -> None:
    await create(rt, id="endless", type="test_block")
    with WorkerProcess(rt.settings, tmp_path):
        await runs_service.trigger(rt, job_id="endless", actor=ACTOR)
        [run] = await wait_for_runs("endless", 1, closed=False)
        assert await is_running(rt, "endless")
        loop = asyncio.get_running_loop()
        asked = loop.time()
        await runs_service.cancel(rt, job_id="endless", actor="user:7")
        await wait_for_runs("endless", 1, timeout=5)
        stopped = loop.time() - asked
        print(f"cancelled run recorded {stopped * 1000:.0f} ms after the request")
        assert stopped < 1.0
        assert not await is_running(rt, "endless")
        with pytest.raises(Conflict) as nothing:
            await runs_service.cancel(rt, job_id="endless", actor="user:7")
        assert nothing.value.code == "not_running"
    [run] = await runs_of("endless")
    assert (run.result, run.details) == ("error", "cancelled by user:7")
    [entry] = await Activity.filter(event="jobs.cancel")
    assert (entry.job_id, entry.actor) == ("endless", "user:7")
    assert (await Job.get(id="endless")).consecutive_failures == 0  # a cancel is not a failure


async def test_a_handler_blocking_its_thread_keeps_running_and_cancelling_until_it_ends(
    rt: Runtime, tmp_path: Path
) -> None:
    await create(rt, id="threaded", type="test_thread", payload={"seconds": 3.0})
    with WorkerProcess(rt.settings, tmp_path):
        await runs_service.trigger(rt, job_id="threaded", actor=ACTOR)
        await wait_for_runs("threaded", 1, closed=False)
        await runs_service.cancel(rt, job_id="threaded", actor=ACTOR)
        await asyncio.sleep(1.5)
        state = await jobs_service.get(rt, job_id="threaded")
        assert (state.running, state.cancelling) == (True, True)  # its thread still runs: no lie either way
        [run] = await runs_of("threaded")
        assert run.completed_at is None
        [run] = await wait_for_runs("threaded", 1, timeout=10)
        state = await jobs_service.get(rt, job_id="threaded")
        assert (state.running, state.cancelling) == (False, False)
    assert (run.result, run.details) == ("error", f"cancelled by {ACTOR}")
    assert run.duration_ms is not None and run.duration_ms >= 2900


async def test_cancel_during_a_retrys_backoff_ends_the_chain_at_once(rt: Runtime, tmp_path: Path) -> None:
    await create(rt, id="waiting", type="test_fail", retry={"maxAttempts": 5, "backoff": "3s"})
    with WorkerProcess(rt.settings, tmp_path):
        await runs_service.trigger(rt, job_id="waiting", actor=ACTOR)
        await wait_for_runs("waiting", 1)
        assert await is_running(rt, "waiting")  # waiting out its backoff
        await runs_service.cancel(rt, job_id="waiting", actor=ACTOR)
        assert not await is_running(rt, "waiting")
        await asyncio.sleep(3.5)  # the retry was due by now: it does not run
    runs = await runs_of("waiting")
    assert [(r.attempt, r.result, r.details) for r in runs] == [
        (1, "error", "boom"),
        (2, "error", f"cancelled by {ACTOR}"),  # the attempt that never started, recorded as cancelled
    ]
