"""Overlap and catch-up policies with a real worker process, over jobs firing `@every 1s`, counted exactly: every
instant of the schedule is either a run's `fireAt` or a recorded skipped fire, never both, never twice."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from itertools import pairwise
from pathlib import Path

import pytest

from app.data.runs import Run
from app.data.skipped_fires import SkippedFire
from app.jobs import service as jobs_service
from app.platform.config import Settings
from app.platform.runtime import Runtime
from tests.factories import wait_until
from tests.lifecycle.support import ACTOR, create, engine_settings, runs_of
from tests.support.processes import WorkerProcess

pytestmark = [pytest.mark.slow, pytest.mark.serial]

SECOND = timedelta(seconds=1)
OBSERVED = 8  # instants counted, from the first fire on


@pytest.fixture
def rt(settings_factory: Callable[..., Settings], orm: Runtime) -> Runtime:
    return Runtime(settings=engine_settings(settings_factory), redis=orm.redis)


async def skipped_instants(job_id: str) -> dict[datetime, str]:
    """Each skipped instant of an `@every 1s` job, with its reason; a range counts each of its instants."""
    return {instant: reason for instant, (reason, _) in (await skip_records(job_id)).items()}


async def skip_records(job_id: str) -> dict[datetime, tuple[str, datetime]]:
    """Each skipped instant of an `@every 1s` job, with its reason and when the skip was decided."""
    found: dict[datetime, tuple[str, datetime]] = {}
    for skip in await SkippedFire.filter(job_id=job_id):
        instants = [skip.fire_at + i * SECOND for i in range(skip.count)]
        assert instants[-1] == skip.last_fire_at
        for instant in instants:
            assert instant not in found, f"{instant} recorded twice"
            found[instant] = (skip.reason, skip.recorded_at)
    return found


async def observe(rt: Runtime, job_id: str, tmp_path: Path) -> tuple[list[Run], dict[datetime, str], datetime]:
    """Run the job under a worker for OBSERVED instants from its second run on, then stop it and let runs end."""
    with WorkerProcess(rt.settings, tmp_path):

        async def fired() -> bool:
            return await Run.filter(job_id=job_id, fire_at__isnull=False).count() >= 2

        await wait_until(fired, timeout=15)
        # From the second run on: the first fire came due while the worker was starting, and ran late.
        first = sorted(r.fire_at for r in await runs_of(job_id) if r.fire_at is not None)[1]
        await asyncio.sleep(max(0.0, (first + OBSERVED * SECOND - rt.now()).total_seconds()) + 0.3)
        await jobs_service.stop(rt, job_id=job_id, actor=ACTOR)

        async def settled() -> bool:
            return not (await jobs_service.get(rt, job_id=job_id)).running

        await wait_until(settled, timeout=10)
    return await runs_of(job_id), await skipped_instants(job_id), first


def account(runs: list[Run], skipped: dict[datetime, str], first: datetime) -> list[str]:
    """What became of each observed instant: `run`, or the reason it was skipped. Fails on a double."""
    fired = Counter(r.fire_at for r in runs if r.fire_at is not None)
    assert max(fired.values()) == 1, "a fire ran twice"
    outcomes = []
    for i in range(OBSERVED):
        instant = first + i * SECOND
        ran, reason = instant in fired, skipped.get(instant)
        assert ran != (reason is not None), f"{instant}: ran {ran}, skipped {reason}"
        outcomes.append("run" if ran else str(reason))
    return outcomes


async def test_skip_runs_a_fire_only_when_the_job_is_free(rt: Runtime, tmp_path: Path) -> None:
    await create(rt, id="long", type="test_sleep", schedule="@every 1s", payload={"seconds": 2.4})
    runs, skipped, first = await observe(rt, "long", tmp_path)
    outcomes = account(runs, skipped, first)
    print(f"skip: {outcomes}")
    spans = _spans(runs)
    for i, outcome in enumerate(outcomes):
        instant = first + i * SECOND
        if outcome == "run":
            # It ran on time: nothing else was running.
            [run] = [r for r in runs if r.fire_at == instant]
            assert (run.started_at - instant) < LATE
            assert not _running_at([s for s in spans if s[0] != run.started_at], instant, -TOLERANCE)
        else:
            assert outcome == "overlap" and _running_at(spans, instant)  # skipped only while one ran
    # Each run takes 2.4 s: at least two fires skipped per run.
    assert outcomes.count("overlap") >= 2 * (outcomes.count("run") - 1)


async def test_buffer_one_keeps_one_fire_waiting_and_runs_it_right_after(rt: Runtime, tmp_path: Path) -> None:
    await create(
        rt, id="buffered", type="test_sleep", schedule="@every 1s", payload={"seconds": 2.4}, overlap="buffer_one"
    )
    runs, skipped, first = await observe(rt, "buffered", tmp_path)
    outcomes = account(runs, skipped, first)
    print(f"buffer_one: {outcomes}")
    ordered = sorted((r for r in runs if r.fire_at is not None), key=lambda r: r.started_at)
    spans = _spans(ordered)
    for (_, ended), (began, _) in pairwise(spans):
        assert ended is not None and ended <= began, "two runs at once"
    waited = 0
    for previous, run in pairwise(ordered):
        assert run.fire_at is not None and previous.completed_at is not None
        if run.fire_at < previous.completed_at - TOLERANCE:
            # It came while another ran, waited, and started as soon as that one ended.
            assert (run.started_at - previous.completed_at) < timedelta(milliseconds=250)
            waited += 1
        else:
            assert (run.started_at - run.fire_at) < LATE
    assert waited >= 2 and "overlap" in outcomes
    for i, outcome in enumerate(outcomes):
        instant = first + i * SECOND
        if outcome == "overlap":
            # Skipped only while one ran and another already waited.
            assert _running_at(spans, instant)
            assert any(r.fire_at < instant <= r.started_at + TOLERANCE for r in ordered if r.fire_at), instant


LATE = timedelta(milliseconds=500)  # a fire that started this late waited
TOLERANCE = timedelta(milliseconds=50)  # a run that ends this close to an instant may go either way


def _spans(runs: list[Run]) -> list[tuple[datetime, datetime | None]]:
    return [(r.started_at, r.completed_at) for r in runs if r.fire_at is not None]


def _running_at(spans: list[tuple[datetime, datetime | None]], instant: datetime, slack: timedelta = TOLERANCE) -> bool:
    return any(b - slack <= instant <= (e or b) + slack for b, e in spans)


async def test_cancel_running_cancels_the_run_and_starts_each_fire(rt: Runtime, tmp_path: Path) -> None:
    await create(
        rt, id="newest", type="test_sleep", schedule="@every 1s", payload={"seconds": 2.4}, overlap="cancel_running"
    )
    runs, skipped, first = await observe(rt, "newest", tmp_path)
    outcomes = account(runs, skipped, first)
    print(f"cancel_running: {outcomes}")
    assert outcomes == ["run"] * OBSERVED
    observed = [r for r in runs if r.fire_at is not None and r.fire_at < first + OBSERVED * SECOND]
    for run, following in pairwise(observed):
        assert (run.result, run.details) == (
            "error",
            f"cancelled by policy: overlap cancel_running, for the fire at {_iso(following.fire_at)}",
        )
        assert following.completed_at is not None and run.completed_at is not None
        assert run.completed_at <= following.started_at  # stopped before the next began
        assert following.fire_at is not None and following.started_at - following.fire_at < LATE


def _iso(moment: datetime | None) -> str:
    assert moment is not None
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def test_catch_up_after_a_worker_outage_follows_each_jobs_window_and_policy(rt: Runtime, tmp_path: Path) -> None:
    fast = {"type": "test_sleep", "schedule": "@every 1s"}
    await create(rt, id="wide", **fast, catchUp={"window": "1m"})
    await create(rt, id="narrow", **fast, catchUp={"window": "2s"})
    await create(rt, id="strict", **fast, catchUp={"window": "1m", "policy": "none"})
    jobs = ["narrow", "strict", "wide"]
    with WorkerProcess(rt.settings, tmp_path, "before"):

        async def all_fired() -> bool:
            return all([await Run.filter(job_id=j).exists() for j in jobs])

        await wait_until(all_fired, timeout=15)
    down_at = rt.now()
    await asyncio.sleep(6)  # no worker: six instants of each job come due
    with WorkerProcess(rt.settings, tmp_path, "after"):

        async def all_back() -> bool:
            return all([await Run.filter(job_id=j, started_at__gt=down_at + 6 * SECOND).count() >= 2 for j in jobs])

        await wait_until(all_back, timeout=15)
        for job_id in jobs:
            await jobs_service.stop(rt, job_id=job_id, actor=ACTOR)
    for job_id in jobs:
        runs = await runs_of(job_id)
        records = await skip_records(job_id)
        before = max(r.fire_at for r in runs if r.started_at < down_at and r.fire_at is not None)
        after = [r for r in runs if r.started_at > down_at + 6 * SECOND and r.fire_at is not None]
        late = [r for r in after if r.fire_at is not None and r.started_at - r.fire_at > LATE]
        resumed = min(r.fire_at for r in after if r.fire_at is not None)
        missed = [before + i * SECOND for i in range(1, int((resumed - before) / SECOND))]
        outcomes = [records[m][0] if m in records else "lost" for m in missed]
        # The worker back decided the missed fires in one claim, at this instant.
        [decided] = {records[m][1] for m in missed if m in records}
        print(f"{job_id}: {len(late)} late run(s), then from {resumed}, decided at {decided}; missed: {outcomes}")
        assert len(missed) >= 4
        if job_id == "strict":
            # `none`: not one of the missed fires runs; the first run after them is a fire due after the decision.
            assert late == []
            assert set(outcomes) == {"cancelled_by_policy"}
            assert resumed > decided
            continue
        # `latest`: one catch-up run, the latest fire due at the decision (late, unless the worker came back just
        # after an instant); the others recorded.
        [caught_up] = [r for r in after if r.fire_at == resumed]
        assert late in ([], [caught_up])
        assert decided - SECOND < resumed <= decided
        if job_id == "wide":
            assert set(outcomes) == {"cancelled_by_policy"}
        else:  # a 2 s window: what was older than that at the decision is outside it
            outside = [m for m, o in zip(missed, outcomes, strict=True) if o == "outside_catch_up_window"]
            inside = [m for m, o in zip(missed, outcomes, strict=True) if o == "cancelled_by_policy"]
            assert len(outside) + len(inside) == len(missed) and len(outside) >= 3
            assert max(outside) < min(inside, default=caught_up.fire_at)
            assert all(m < decided - 2 * SECOND for m in outside)
            assert all(m >= decided - 2 * SECOND for m in inside)
