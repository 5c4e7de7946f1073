"""Direct dispatch of manual triggers (app.engine.triggers, app.engine.consumer): real workers, a real
redis-server, no arq claim.

Each guarantee of the trigger path, on the consumer that every worker runs: one run per accepted trigger,
409 while queued or running, nothing lost while no worker runs or when a worker dies holding a message,
slots shared with arq's jobs, and a stopping worker that takes nothing more.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from app.data.runs import Run
from app.engine import consumer as consumers
from app.engine import context, leases, runs, triggers
from app.engine.events import CHANNEL
from app.engine.waking import WakingWorker
from app.engine.worker import build_embedded, shut_down
from app.job_types import registry
from app.platform.aio import cancel_and_wait
from app.platform.errors import Conflict, Unavailable
from app.platform.redis_pool import connect_redis
from app.platform.runtime import Runtime
from app.runs import service as runs_service
from tests.factories import make_job, wait_until
from tests.support.processes import BIN, WorkerProcess, _Process, env_for
from tests.support.servers import RedisServer
from workers.settings import ARQ_CLI_REFUSED


@contextlib.asynccontextmanager
async def worker_running(rt: Runtime, **overrides: Any) -> AsyncIterator[WakingWorker]:
    """An in-process worker (the embedded one) with its consumer, stopped as the API's shutdown stops it."""
    wrt = Runtime(settings=rt.settings.model_copy(update=overrides), redis=rt.redis, clock=rt.clock)
    worker = await build_embedded(wrt, registry.run)
    task = asyncio.create_task(worker.async_run())

    async def consuming() -> bool:
        return context.of(worker.ctx).consumer is not None

    try:
        await wait_until(consuming, timeout=10, interval=0.01)
        yield worker
    finally:
        await shut_down(worker, wrt.settings.shutdown_grace_seconds)
        await cancel_and_wait(task)


def consumer(worker: WakingWorker) -> consumers.Consumer:
    found = context.of(worker.ctx).consumer
    assert found is not None
    return found


async def finished_runs(job_id: str, count: int = 1, timeout: float = 10) -> list[Run]:
    async def done() -> bool:
        return await Run.filter(job_id=job_id, completed_at__isnull=False).count() >= count

    await wait_until(done, timeout=timeout)
    return await Run.filter(job_id=job_id).order_by("id")


async def queued(rt: Runtime) -> int:
    return int(await rt.redis.llen(triggers.LIST_KEY))  # type: ignore[misc]


async def pending(rt: Runtime) -> int:
    return int(await rt.redis.zcard(triggers.PENDING_KEY))


async def test_a_trigger_runs_on_the_consumer_without_an_arq_job(orm: Runtime) -> None:
    await make_job(id="direct", payload={"summary": "done directly"})
    pubsub = orm.redis.pubsub()
    await pubsub.subscribe(CHANNEL)
    await pubsub.get_message(timeout=1)  # subscribe confirmation
    async with worker_running(orm) as worker:
        token = await runs_service.trigger(orm, job_id="direct", actor="user:1")
        [run] = await finished_runs("direct")
        assert (run.token, run.result, run.details, run.triggered_by) == (token, "success", "done directly", "user:1")
        assert consumer(worker).taken == 1
        assert worker.jobs_complete + worker.jobs_failed == 0  # arq ran nothing
    events = []
    while (message := await pubsub.get_message(timeout=0.5)) is not None:
        if message["type"] == "message":
            events.append(json.loads(message["data"]))
    await pubsub.aclose()  # type: ignore[no-untyped-call]
    assert [e["event"] for e in events] == ["run.queued", "run.started", "run.finished"]
    assert events[1]["runId"] == run.id and events[1]["triggeredBy"] == "user:1"
    assert (await queued(orm), await pending(orm)) == (0, 0)
    assert await leases.holder(orm.redis, "direct") is None


async def test_a_trigger_waits_in_the_list_while_no_worker_runs_then_runs_once(orm: Runtime) -> None:
    await make_job(id="patient", payload={"summary": "ran late"})
    await runs_service.trigger(orm, job_id="patient", actor="user:1")
    with pytest.raises(Conflict):  # 409 while queued: the lease is the job's, not the worker's
        await runs_service.trigger(orm, job_id="patient", actor="user:2")
    await asyncio.sleep(0.2)
    assert (await queued(orm), await Run.filter(job_id="patient").count()) == (1, 0)
    async with worker_running(orm) as worker:
        [run] = await finished_runs("patient")
        assert (run.result, run.details, run.triggered_by) == ("success", "ran late", "user:1")
        await asyncio.sleep(0.2)
        assert consumer(worker).taken == 1
    assert await Run.filter(job_id="patient").count() == 1


async def queued_until_its_lease_lapsed(orm: Runtime, job_id: str, actor: str) -> Runtime:
    """A trigger accepted under a 0.4 s queued lease that no worker took in time: the lease lapsed, and another
    run has taken the job since. The API's runtime, with that setting."""
    await make_job(id=job_id, type="test_fail")
    api = Runtime(
        settings=orm.settings.model_copy(update={"queued_lease_ttl_seconds": 0.4}), redis=orm.redis, clock=orm.clock
    )
    await runs_service.trigger(api, job_id=job_id, actor=actor)

    async def lapsed() -> bool:
        return await leases.holder(orm.redis, job_id) is None

    await wait_until(lapsed, timeout=5)
    await orm.redis.set(leases.key(job_id), "successor")
    return api


async def test_a_popped_trigger_whose_queued_lease_lapsed_is_recorded_not_run(orm: Runtime) -> None:
    short = await queued_until_its_lease_lapsed(orm, "stranded", "user:4")
    async with worker_running(short):
        [run] = await finished_runs("stranded")
    assert (run.result, run.triggered_by) == ("error", "user:4")
    assert run.details == "not started: no worker took it within 0.4 s"  # not the handler's "boom"
    assert await leases.holder(orm.redis, "stranded") == "successor"  # neither extended nor released
    assert await pending(orm) == 0


async def test_a_worker_trusts_the_lease_life_the_api_gave_not_its_own_setting(orm: Runtime) -> None:
    # The API queues with a 0.4 s lease, the worker's own setting says 60 s: the message's expiry (by Redis's
    # clock) is what counts, so the lapsed lease is checked, found gone, and the handler never runs.
    await queued_until_its_lease_lapsed(orm, "short-lived", "user:5")
    async with worker_running(orm, queued_lease_ttl_seconds=60):
        [run] = await finished_runs("short-lived")
    assert (run.result, run.triggered_by) == ("error", "user:5")
    assert run.details.startswith("not started: no worker took it within")  # not the handler's "boom"
    assert await leases.holder(orm.redis, "short-lived") == "successor"


async def test_a_fresh_trigger_starts_before_its_lease_check_and_stops_if_the_lease_is_not_its_own(
    orm: Runtime,
) -> None:
    # A lease taken under a second ago cannot have lapsed: the handler starts once the run record is written,
    # while the lease is extended. Should the extension be refused all the same (here: the lease overwritten
    # by hand), the handler is cancelled and the run says so; the other holder's lease is left alone.
    await make_job(id="usurped", type="test_sleep", payload={"seconds": 5, "summary": "slept"})
    await runs_service.trigger(orm, job_id="usurped", actor="user:6")
    await orm.redis.set(leases.key("usurped"), "successor")
    async with worker_running(orm):
        [run] = await finished_runs("usurped", timeout=4)  # cancelled well before its 5 s sleep ends
    assert (run.result, run.details, run.triggered_by) == ("error", "lease lost", "user:6")
    assert await leases.holder(orm.redis, "usurped") == "successor"
    assert await pending(orm) == 0


async def test_a_worker_killed_between_pop_and_record_leaves_a_trace_that_the_sweep_records(orm: Runtime) -> None:
    await make_job(id="orphan")
    token = await runs_service.trigger(orm, job_id="orphan", actor="user:5")
    # What a worker killed right after its BLPOP leaves: the message gone from the list, nothing recorded.
    assert await orm.redis.lpop(triggers.LIST_KEY) is not None  # type: ignore[misc]
    [_, accepted] = (await orm.redis.zrange(triggers.PENDING_KEY, 0, -1, withscores=True))[0]
    later = Runtime(
        settings=orm.settings,
        redis=orm.redis,
        clock=lambda: orm.now() + timedelta(seconds=orm.settings.queued_lease_ttl_seconds + 10),
    )
    assert await consumers.sweep(orm) == 0  # too recent
    assert await consumers.sweep(later) == 0  # its lease is still held: it may be running
    assert await Run.filter(job_id="orphan").count() == 0
    await orm.redis.delete(leases.key("orphan"))  # the lease lapses
    assert await consumers.sweep(later) == 1
    [run] = await Run.filter(job_id="orphan")
    assert (run.token, run.result, run.triggered_by) == (token, "error", "user:5")
    assert run.details == "not started: no worker took it within 60 s"
    assert accepted > 0 and await pending(orm) == 0
    assert await consumers.sweep(later) == 0
    assert await Run.filter(job_id="orphan").count() == 1


async def test_the_sweep_only_forgets_a_run_that_has_its_record(orm: Runtime) -> None:
    await make_job(id="recorded", payload={"summary": "fine"})
    await runs_service.trigger(orm, job_id="recorded", actor="user:1")
    raw = await orm.redis.lpop(triggers.LIST_KEY)  # type: ignore[misc]
    assert raw is not None
    # The worker wrote the record and finished, but the pending entry's clean-up was lost (Redis blip).
    await consumers.run_trigger(orm, registry.run, raw, triggers.Message.decode(raw))
    await orm.redis.zadd(triggers.PENDING_KEY, {raw: 1})
    assert await consumers.sweep(orm) == 0  # recorded already: nothing new, only forgotten
    [run] = await Run.filter(job_id="recorded")
    assert (run.result, run.details) == ("success", "fine")
    assert await pending(orm) == 0


async def test_the_consumer_takes_a_trigger_only_when_the_worker_has_a_free_slot(orm: Runtime) -> None:
    await make_job(id="first", payload={"seconds": 1.0, "summary": "first"})
    await make_job(id="second", payload={"summary": "second"})
    async with worker_running(orm, worker_max_jobs=1) as worker:
        await runs_service.trigger(orm, job_id="first", actor="user:1")

        async def busy() -> bool:
            return worker.job_counter == 1

        await wait_until(busy, timeout=5, interval=0.005)
        await runs_service.trigger(orm, job_id="second", actor="user:1")
        await asyncio.sleep(0.3)
        assert await queued(orm) == 1  # left for another worker while this one's slot is taken
        assert worker.job_counter == 1
        [second] = await finished_runs("second")
        [first] = await Run.filter(job_id="first")
    assert first.completed_at is not None and second.started_at >= first.completed_at


async def test_a_stopping_worker_hands_back_a_trigger_it_popped_and_another_worker_runs_it(orm: Runtime) -> None:
    await make_job(id="handed-back", payload={"summary": "second worker"})
    async with worker_running(orm) as stopping:
        stopping.allow_pick_jobs = False  # what SIGTERM does first: the consumer is blocked in BLPOP
        await runs_service.trigger(orm, job_id="handed-back", actor="user:1")

        async def handed_back() -> bool:
            return consumer(stopping).done()

        await wait_until(handed_back, timeout=5, interval=0.01)
        assert await queued(orm) == 1
        assert consumer(stopping).taken == 0
    async with worker_running(orm) as other:
        [run] = await finished_runs("handed-back")
        assert (run.result, run.details) == ("success", "second worker")
        assert consumer(other).taken == 1


async def test_shutdown_lets_a_short_direct_run_finish_and_records_a_long_one(orm: Runtime) -> None:
    await make_job(id="short", payload={"seconds": 0.5, "summary": "made it"})
    await make_job(id="long", type="test_block")
    async with worker_running(orm, shutdown_grace_seconds=1.0):
        await runs_service.trigger(orm, job_id="short", actor="user:1")
        await runs_service.trigger(orm, job_id="long", actor="user:1")

        async def both_started() -> bool:
            return await Run.filter(job_id__in=["short", "long"]).count() == 2

        await wait_until(both_started, timeout=5, interval=0.01)
    [short] = await Run.filter(job_id="short")
    [long] = await Run.filter(job_id="long")
    assert (short.result, short.details) == ("success", "made it")
    assert (long.result, long.details) == ("error", "worker shut down")
    assert await leases.holder(orm.redis, "long") is None


@pytest.mark.slow
async def test_sigkill_mid_direct_run_is_recorded_as_worker_lost(orm: Runtime, tmp_path: Path) -> None:
    settings = orm.settings.model_copy(update={"embedded_worker": False})
    await make_job(id="victim", type="test_block")
    with WorkerProcess(settings, tmp_path) as worker:
        await runs_service.trigger(orm, job_id="victim", actor="user:1")

        async def running() -> bool:
            return await Run.filter(job_id="victim", completed_at__isnull=True).exists()

        await wait_until(running, timeout=10)

        async def announced() -> bool:
            return await pending(orm) == 0

        await wait_until(announced, timeout=5)
        worker.signal(signal.SIGKILL)
        worker.wait(10)
    await asyncio.sleep(settings.lease_ttl_seconds + 0.2)  # the lease lapses without its heartbeat
    later = Runtime(settings=settings, redis=orm.redis, clock=lambda: orm.now() + timedelta(seconds=10))
    assert (await runs.reap_lost(later)).closed == 1
    [run] = await Run.filter(job_id="victim")
    assert (run.result, run.details) == ("error", "worker lost")
    assert (await queued(orm), await pending(orm)) == (0, 0)


@pytest.mark.slow
async def test_arqs_own_cli_refuses_with_one_line_naming_the_standalone_worker(orm: Runtime, tmp_path: Path) -> None:
    """arq's stock Worker cannot share its slots with triggers: `arq workers.WorkerSettings` says what to run."""
    settings = orm.settings.model_copy(update={"embedded_worker": False})
    cli = _Process([str(BIN / "arq"), "workers.WorkerSettings"], env_for(settings), tmp_path, "arq-cli")
    cli.ready_text = "never printed"
    with pytest.raises(RuntimeError, match="did not start"):
        cli.start(timeout=30)
    assert cli.wait(5) == 1
    output = cli.log_path.read_text().strip().splitlines()
    assert output == [ARQ_CLI_REFUSED], output
    assert "jobs-gateway worker" in ARQ_CLI_REFUSED


@pytest.mark.slow
async def test_the_consumer_reconnects_after_a_redis_restart(orm: Runtime) -> None:
    await make_job(id="after-restart", payload={"summary": "back"})
    with RedisServer() as private:
        settings = orm.settings.model_copy(update={"redis_url": private.url})
        rt = Runtime(settings=settings, redis=await connect_redis(settings))
        try:
            async with worker_running(rt) as worker:
                private.stop()
                await asyncio.sleep(2.5)  # the consumer's BLPOP fails and retries meanwhile
                private.start()
                for _ in range(50):  # the API's own pool reconnects on its next command
                    with contextlib.suppress(Unavailable):
                        await runs_service.trigger(rt, job_id="after-restart", actor="user:1")
                        break
                    await asyncio.sleep(0.2)
                [run] = await finished_runs("after-restart", timeout=15)
                assert (run.result, run.details) == ("success", "back")
                assert consumer(worker).taken == 1 and not consumer(worker).done()
        finally:
            await rt.redis.aclose()


async def test_a_retried_trigger_call_queues_its_run_once(orm: Runtime) -> None:
    await make_job(id="retried", payload={"summary": "once"})
    message = triggers.Message("retried", "tok-1", "test_sleep", {"summary": "once"}, None, "user:1")
    first = await triggers.dispatch(orm, message, run_here=False)
    assert first.accepted and first.message is not None
    queued_message = triggers.Message.decode(first.message)
    seconds, micros = await orm.redis.time()
    redis_now_ms = seconds * 1000 + micros // 1000
    # When its lease expires, by Redis's clock, set by the script: 60 s from its acceptance.
    assert queued_message.token == "tok-1"
    assert redis_now_ms + 59_000 < queued_message.expires_ms <= redis_now_ms + 60_000
    retry = await triggers.dispatch(orm, message, run_here=False)  # the client's retry after a lost reply
    assert (retry.accepted, retry.message) == (True, None)
    assert (await queued(orm), await pending(orm)) == (1, 1)
    other = triggers.Message("retried", "tok-2", "test_sleep", {}, None, "user:2")
    assert not (await triggers.dispatch(orm, other, run_here=False)).accepted  # someone else's: 409
    assert await queued(orm) == 1


async def test_a_run_meant_for_the_caller_is_not_queued_unless_its_reply_was_lost(orm: Runtime) -> None:
    await make_job(id="mine", payload={"summary": "once"})
    message = triggers.Message("mine", "tok-1", "test_sleep", {"summary": "once"}, None, "user:1")
    first = await triggers.dispatch(orm, message, run_here=True)
    assert first.accepted and first.message is not None
    assert (await queued(orm), await pending(orm)) == (0, 1)  # not queued, but covered by the pending set
    # The same call again: its first reply was lost, so the caller never ran it. The workers get it. (A while
    # later: a new lease taken by mistake would expire that much later than the first.)
    await asyncio.sleep(0.05)
    retry = await triggers.dispatch(orm, message, run_here=True)
    assert (retry.accepted, retry.message) == (True, None)
    assert await queued(orm) == 1
    # Its message says when the first call's lease expires: the retry took no new lease.
    [pushed] = await orm.redis.lrange(triggers.LIST_KEY, 0, -1)  # type: ignore[misc]
    assert 0 <= triggers.Message.decode(first.message).expires_ms - triggers.Message.decode(pushed).expires_ms <= 1
    async with worker_running(orm):
        [run] = await finished_runs("mine")
    assert (run.token, run.result) == ("tok-1", "success")


async def test_the_apis_embedded_worker_takes_its_own_trigger_without_the_list(orm: Runtime) -> None:
    await make_job(id="local", payload={"seconds": 0.2, "summary": "ran here"})
    rt = Runtime(settings=orm.settings, redis=orm.redis, clock=orm.clock)  # the API's runtime
    worker = await build_embedded(rt, registry.run)
    task = asyncio.create_task(worker.async_run())
    try:
        await wait_until(lambda: _registered(rt), timeout=10, interval=0.01)
        pushes = await _list_pushes(orm)
        token = await runs_service.trigger(rt, job_id="local", actor="user:1")
        # The call returns once the handler has started: its run record is there already.
        [started] = await Run.filter(job_id="local")
        assert (started.token, started.completed_at) == (token, None)
        [run] = await finished_runs("local")
        assert (run.result, run.details) == ("success", "ran here")
        assert (consumer(worker).taken, consumer(worker).taken_here) == (1, 1)
        assert await _list_pushes(orm) == pushes  # nothing went through the dispatch list
        assert (await queued(orm), await pending(orm)) == (0, 0)

        async def slot_back() -> bool:
            return worker.job_counter == 0

        await wait_until(slot_back, timeout=5)
        # 409 while it runs gives the reserved slot back too.
        await make_job(id="slow", payload={"seconds": 1.0})
        await runs_service.trigger(rt, job_id="slow", actor="user:1")
        with pytest.raises(Conflict):
            await runs_service.trigger(rt, job_id="slow", actor="user:2")
        assert worker.job_counter == 1
        await finished_runs("slow")
        # A stopped worker takes nothing more: the next trigger waits in the list for another.
        await shut_down(worker, rt.settings.shutdown_grace_seconds)
        assert triggers.local_runner(rt) is None
        await runs_service.trigger(rt, job_id="local", actor="user:3")
        assert await queued(orm) == 1
    finally:
        await shut_down(worker, rt.settings.shutdown_grace_seconds)
        await cancel_and_wait(task)


async def _registered(rt: Runtime) -> bool:
    return triggers.local_runner(rt) is not None


async def _slots_free(worker: WakingWorker) -> bool:
    return worker.job_counter == 0


async def _list_pushes(rt: Runtime) -> int:
    """RPUSH and LPUSH calls the server has run, scripts' included (one server per test session, tests in turn)."""
    stats = await rt.redis.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("rpush", "lpush"))


@contextlib.asynccontextmanager
async def embedded_worker(orm: Runtime) -> AsyncIterator[tuple[Runtime, WakingWorker]]:
    """An API's runtime with its embedded worker taking the API's own triggers."""
    rt = Runtime(settings=orm.settings, redis=orm.redis, clock=orm.clock)
    worker = await build_embedded(rt, registry.run)
    task = asyncio.create_task(worker.async_run())
    try:
        await wait_until(lambda: _registered(rt), timeout=10, interval=0.01)
        yield rt, worker
    finally:
        await shut_down(worker, rt.settings.shutdown_grace_seconds)
        await cancel_and_wait(task)


async def test_a_trigger_whose_dispatch_reply_is_lost_is_run_by_a_worker_not_stranded(
    orm: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API's Redis client does not retry: the trigger itself calls the script again when the reply of a
    call meant to run here is lost, and that second call queues the run for any worker."""
    await make_job(id="lost-reply", payload={"summary": "ran anyway"})
    real = triggers.dispatch
    calls: list[bool] = []

    async def reply_lost_once(*args: Any, **kwargs: Any) -> triggers.Dispatched:
        calls.append(kwargs["run_here"])
        answer = await real(*args, **kwargs)  # the script runs on the real server...
        if len(calls) == 1:
            raise RedisConnectionError("Connection reset by peer")  # ...and its reply never arrives
        return answer

    monkeypatch.setattr(triggers, "dispatch", reply_lost_once)
    async with embedded_worker(orm) as (rt, worker):
        token = await runs_service.trigger(rt, job_id="lost-reply", actor="user:1")
        [run] = await finished_runs("lost-reply")
        assert (run.token, run.result, run.details) == (token, "success", "ran anyway")
        assert calls == [True, True]
        # Taken from the list (by this same worker, the only one), not from the call: the slot it had
        # reserved was given back.
        assert (consumer(worker).taken, consumer(worker).taken_here) == (1, 0)
        await wait_until(lambda: _slots_free(worker), timeout=5)
        assert await Run.filter(job_id="lost-reply").count() == 1


async def test_a_trigger_cancelled_while_dispatching_gives_its_reserved_slot_back(
    orm: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    await make_job(id="cancelled")
    in_call = asyncio.Event()

    async def never_answers(*_: Any, **__: Any) -> triggers.Dispatched:
        in_call.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async with embedded_worker(orm) as (rt, worker):
        monkeypatch.setattr(triggers, "dispatch", never_answers)
        call = asyncio.create_task(runs_service.trigger(rt, job_id="cancelled", actor="user:1"))
        await asyncio.wait_for(in_call.wait(), 5)
        assert worker.job_counter == 1  # reserved for this trigger
        await cancel_and_wait(call)
        assert worker.job_counter == 0
        monkeypatch.undo()
        await runs_service.trigger(rt, job_id="cancelled", actor="user:2")  # the slot is usable again
        [run] = await finished_runs("cancelled")
        assert (run.triggered_by, run.result) == ("user:2", "success")


async def test_a_run_handed_to_a_worker_that_began_stopping_goes_to_the_list(orm: Runtime) -> None:
    await make_job(id="late")
    async with embedded_worker(orm) as (rt, worker):
        local = triggers.local_runner(rt)
        assert local is not None and await local.reserve()
        run = triggers.Message("late", "tok-late", "test_sleep", {}, None, "user:1")
        dispatched = await triggers.dispatch(orm, run, run_here=True)
        assert dispatched.message is not None
        worker.stop_accepting()  # the shutdown began between the reservation and the start
        await local.start(dispatched.message)
        assert (worker.job_counter, consumer(worker).taken) == (0, 0)

        async def in_the_list() -> bool:  # this worker's consumer, blocked in BLPOP, may pop it and hand it back
            return await queued(orm) == 1

        await wait_until(in_the_list, timeout=10)  # for the other workers
        assert await Run.filter(job_id="late").count() == 0
