"""The one start path (app.engine.starts): triggers and fires alike take their lease, write their run record and
are announced through `begin`, and each outcome of a start is the same whichever way the run came."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from app.data.runs import Run
from app.engine import consumer, leases, runs, scheduler, starts, triggers
from app.engine.fires import fire_job, spec_of
from app.job_types import registry
from app.platform.runtime import Runtime
from app.runs import service as runs_service
from tests.factories import make_job
from tests.support.engine import skipped_fires, worker_ctx

pytestmark = pytest.mark.postgres


async def test_triggers_and_fires_both_start_through_begin(orm: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str | None]] = []
    real = starts.begin

    async def recorded(rt: Runtime, started: list[starts.Start], **kwargs: Any) -> starts.Began:
        calls.append([s.triggered_by for s in started])
        return await real(rt, started, **kwargs)

    monkeypatch.setattr(starts, "begin", recorded)
    await make_job(id="triggered", enabled=False)
    await runs_service.trigger(orm, job_id="triggered", actor="user:1")
    raw = await triggers.pop(orm.redis, 1)
    assert raw is not None
    await consumer.run_trigger(orm, registry.run, raw, triggers.Message.decode(raw))
    job = await make_job(id="fired", schedule="@every 1m")
    fire = await scheduler.reconcile_job(orm, job)
    assert fire is not None
    at_fire = Runtime(settings=orm.settings, redis=orm.redis, clock=lambda: fire + timedelta(milliseconds=1))
    await fire_job(worker_ctx(at_fire), "fired", fire.isoformat())
    assert calls == [["user:1"], [runs.SCHEDULER]]
    assert {r.job_id: r.result for r in await Run.all()} == {"triggered": "success", "fired": "success"}


async def test_a_trigger_whose_token_began_already_does_not_run_again_nor_drop_its_lease(orm: Runtime) -> None:
    job = await make_job(id="once", enabled=False)
    token = await runs_service.trigger(orm, job_id="once", actor="user:1")
    raw = await triggers.pop(orm.redis, 1)
    assert raw is not None
    start = starts.Start(spec_of(job), token, "user:1", message=raw)
    first = await starts.begin(orm, [start])
    again = await starts.begin(orm, [start])  # redelivered: the same token
    await asyncio.gather(first.announced, again.announced)
    assert first.runs[0] is not None and again.runs == [None]
    assert await Run.filter(job_id="once").count() == 1
    assert await leases.holder(orm.redis, "once") == token  # still the first execution's
    assert await orm.redis.zcard(triggers.PENDING_KEY) == 0  # recorded: no longer pending


async def test_a_refused_lease_skips_a_fire_and_records_a_trigger_as_not_started(orm: Runtime) -> None:
    busy = await make_job(id="busy", schedule="@every 1m")
    lapsed = await make_job(id="lapsed", enabled=False)
    assert await leases.acquire(orm.redis, "busy", "the-running-one", 30)
    await runs_service.trigger(orm, job_id="lapsed", actor="user:2")
    raw = await triggers.pop(orm.redis, 1)
    assert raw is not None
    await orm.redis.delete(leases.key("lapsed"))  # its queued lease lapsed before a worker took it
    message = triggers.Message.decode(raw)
    fire_at = orm.now().replace(microsecond=0)
    began = await starts.begin(
        orm,
        [
            starts.Start(spec_of(busy), runs.new_token(), runs.SCHEDULER, fire_at=fire_at),
            starts.Start(spec_of(lapsed), message.token, "user:2", message=raw),
        ],
    )
    await began.announced
    assert began.runs == [None, None]
    assert await skipped_fires("busy") == {"overlap": 1}
    assert not await Run.filter(job_id="busy").exists()  # a skipped fire writes no run record
    [dropped] = await Run.filter(job_id="lapsed")
    assert (dropped.result, dropped.triggered_by) == ("error", "user:2")
    assert dropped.details is not None and dropped.details.startswith("not started")
    assert await leases.holder(orm.redis, "busy") == "the-running-one"


async def test_a_failed_insert_gives_back_only_the_leases_the_call_acquired(
    orm: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    fired = await make_job(id="fired", schedule="@every 1m")
    triggered = await make_job(id="triggered", enabled=False)
    token = await runs_service.trigger(orm, job_id="triggered", actor="user:1")
    raw = await triggers.pop(orm.redis, 1)
    assert raw is not None

    async def broken(*_: object) -> list[Run | None]:
        raise RuntimeError("the database went away")

    monkeypatch.setattr(runs, "insert", broken)
    with pytest.raises(RuntimeError):
        await starts.begin(
            orm,
            [
                starts.Start(spec_of(fired), "fire-token", runs.SCHEDULER, fire_at=orm.now()),
                starts.Start(spec_of(triggered), token, "user:1", message=raw),
            ],
        )
    assert await leases.holder(orm.redis, "fired") is None  # acquired here: given back
    assert await leases.holder(orm.redis, "triggered") == token  # the API's: it lapses, and the sweep records it
