"""What app/adapters/arq.py relies on in arq 0.28.0, pinned: an upgrade fails here first, saying what changed.

The source pins cover what ArqWorker copies or overrides (`Worker.main`, `start_jobs`) and the arq code whose
behaviour the adapter's Lua mimics or counts on (the claim, the poll iteration, the release of a slot, `run_job`
finishing a job whose in-progress key holds a claim token, `enqueue_job`'s record). When one fails: read the new
source, bring the adapter in line (re-copy `ArqWorker.main`, re-check the Lua), then update the hash here.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from arq import Worker, constants
from arq.connections import ArqRedis
from arq.jobs import serialize_job
from arq.worker import func

from app.adapters import arq as adapter
from app.engine.waking import WakingWorker
from tests.adapters.conftest import SERIALIZERS
from tests.adapters.pins import Sources, check_source, check_version

pytestmark = pytest.mark.sqlite_only  # Redis only: nothing more to learn on PostgreSQL

VERSION = "0.28.0"
SOURCES: Sources = {
    "Worker.main": (Worker.main, "45ca1591c9717466"),
    "Worker.start_jobs": (Worker.start_jobs, "b45797cfa40bed7f"),
    "Worker._poll_iteration": (Worker._poll_iteration, "f8d39d823a0a59f2"),
    "Worker._release_sem_dec_counter_on_complete": (Worker._release_sem_dec_counter_on_complete, "0ed101482e942c33"),
    "Worker.run_job": (Worker.run_job, "589a19059ff84ee7"),
    "Worker.finish_job": (Worker.finish_job, "903f09c92830d3fd"),
    "ArqRedis.enqueue_job": (ArqRedis.enqueue_job, "7da8706a747c1171"),
    "serialize_job": (serialize_job, "1fc854cc50e16e5c"),
}


ADAPTER = "app/adapters/arq.py"


def test_the_version_is_the_one_the_adapter_was_written_for() -> None:
    check_version("arq", VERSION, ADAPTER)


@pytest.mark.parametrize("name", SOURCES)
def test_the_code_the_adapter_copies_or_counts_on_is_unchanged(name: str) -> None:
    check_source(name, SOURCES, ADAPTER)  # Worker.main: re-copy ArqWorker.main from it


def test_the_keys_and_attributes_the_adapter_uses_exist() -> None:
    assert (constants.default_queue_name, constants.job_key_prefix, constants.in_progress_key_prefix) == (
        "arq:queue",
        "arq:job:",
        "arq:in-progress:",
    )
    assert (constants.retry_key_prefix, constants.result_key_prefix) == ("arq:retry:", "arq:result:")


async def _noted(ctx: dict[str, Any], value: str) -> str:
    ctx["noted"].append(value)  # arq hands each job a copy of the worker's ctx: the list is the worker's own
    return value


def _stock(redis: ArqRedis, **options: Any) -> Worker:
    """A stock arq Worker in burst mode, noting each value it runs `noted` with in ctx["noted"]."""
    functions = [func(_noted, name="noted")]
    return Worker(
        functions=functions, redis_pool=redis, burst=True, poll_delay=0, ctx={"noted": []}, **SERIALIZERS, **options
    )


async def test_a_worker_instance_has_the_attributes_the_adapter_reads(redis: ArqRedis) -> None:
    worker = _stock(redis, max_jobs=3)
    try:
        assert isinstance(worker.sem, asyncio.BoundedSemaphore) and worker.job_counter == 0
        assert worker.tasks == {} and worker.main_task is None and worker.allow_pick_jobs is True
        assert worker._pool is redis and worker.pool is redis
        assert worker.in_progress_timeout_s > 0 and worker.queue_read_limit == 100 and worker.poll_delay_s == 0
        assert worker._jobs_started() == 0 and isinstance(worker.ctx, dict)
        assert adapter.WORKER_KEY not in worker.ctx  # a stock worker does not say who it is
    finally:
        await worker.close()


async def test_an_arq_worker_puts_itself_in_its_ctx_and_runs_the_hooks_around_its_polls(redis: ArqRedis) -> None:
    calls: list[str] = []

    class Probe(adapter.ArqWorker):
        def before_poll(self) -> None:
            calls.append("poll")

        async def wait_for_work(self) -> None:
            calls.append("wait")
            await asyncio.sleep(0)

    async def on_startup(ctx: dict[str, Any]) -> None:
        assert isinstance(ctx[adapter.WORKER_KEY], Probe)
        calls.append("startup")

    await redis.enqueue_job("noted", "x", _job_id="one")
    worker = Probe(
        functions=[func(_noted, name="noted")],
        redis_pool=redis,
        on_startup=on_startup,
        burst=True,
        ctx={"noted": []},
        **SERIALIZERS,
    )
    try:
        await asyncio.wait_for(worker.async_run(), 10)
    finally:
        await worker.close()
    assert calls[:3] == ["startup", "poll", "wait"] and calls[-1] == "poll"
    assert worker.polls == calls.count("poll") and worker.jobs_complete == 1


async def test_one_slot_taken_and_released_leaves_the_worker_as_it_was(redis: ArqRedis) -> None:
    worker = adapter.ArqWorker(
        functions=[func(_noted, name="noted")], redis_pool=redis, max_jobs=2, ctx={}, **SERIALIZERS
    )
    try:
        assert await worker.try_take_slot() and worker.job_counter == 1
        assert await worker.try_take_slot() and worker.full()
        assert not await worker.try_take_slot()  # full: nothing taken
        worker.release_slot()
        worker.release_slot()
        assert worker.job_counter == 0
        # The semaphore is back to its full count (max_jobs + 1): a bounded semaphore refuses one release more.
        with pytest.raises(ValueError):
            worker.sem.release()
        worker.stop_accepting()
        assert not await worker.take_slot(retry_every=0.01) and not await worker.try_take_slot()
    finally:
        await worker.close()


async def test_a_stock_worker_runs_what_the_adapter_enqueues_and_skips_what_it_claimed(redis: ArqRedis) -> None:
    jobs = [adapter.Deferred(f"job-{i}", "noted", (f"value-{i}",), 1, 60_000) for i in range(3)]  # due long ago
    assert await adapter.enqueue_unless_present(redis, jobs) == [True, True, True]
    assert await adapter.enqueue_unless_present(redis, jobs[:1]) == [False]  # arq holds that id: not again
    claimed = await adapter.claim_due(
        redis, queue_name=constants.default_queue_name, job_ids=[b"job-2"], limit=1, in_progress_ms=60_000, token="t"
    )
    assert [job_id for job_id, _ in claimed] == ["job-2"]
    worker = _stock(redis, max_burst_jobs=2)  # job-2 stays queued, in progress elsewhere: burst ends after two
    try:
        await asyncio.wait_for(worker.async_run(), 10)
    finally:
        await worker.close()
    assert sorted(worker.ctx["noted"]) == ["value-0", "value-1"]  # job-2 is in progress elsewhere
    assert await adapter.exist(redis, ["job-0", "job-2"]) == [False, True]


async def test_forget_leaves_no_arq_key_of_the_job(redis: ArqRedis) -> None:
    await adapter.enqueue_unless_present(redis, [adapter.Deferred("gone", "noted", ("x",), 1, 60_000)])
    await adapter.claim_due(
        redis, queue_name=constants.default_queue_name, job_ids=[b"gone"], limit=1, in_progress_ms=60_000, token="t"
    )
    await redis.set(constants.retry_key_prefix + "gone", 1)
    await adapter.forget(redis, constants.default_queue_name, "gone")
    assert [key async for key in redis.scan_iter("arq:*gone*")] == []
    assert await redis.zscore(constants.default_queue_name, "gone") is None


async def test_withdraw_takes_a_queued_job_back_unless_a_worker_has_it(redis: ArqRedis) -> None:
    jobs = [adapter.Deferred(f"later-{i}", "noted", (f"value-{i}",), 1, 60_000) for i in range(3)]
    await adapter.enqueue_unless_present(redis, jobs)
    await adapter.claim_due(
        redis, queue_name=constants.default_queue_name, job_ids=[b"later-2"], limit=1, in_progress_ms=60_000, token="t"
    )
    assert await adapter.withdraw(redis, "later-0") == ("value-0",)  # its arguments, as enqueued
    assert await adapter.withdraw(redis, "later-0") is None  # once
    assert await adapter.withdraw(redis, "later-2") is None  # a worker has it
    assert await adapter.withdraw(redis, "never") is None
    worker = _stock(redis, max_burst_jobs=1)  # what is left: later-1 only (later-2 is in progress elsewhere)
    try:
        await asyncio.wait_for(worker.async_run(), 10)
    finally:
        await worker.close()
    assert worker.ctx["noted"] == ["value-1"]
    assert await adapter.exist(redis, ["later-0"]) == [False]


async def test_another_try_lets_a_job_run_again_after_its_one_try(redis: ArqRedis) -> None:
    await adapter.enqueue_unless_present(redis, [adapter.Deferred("again", "noted", ("x",), 1, 60_000)])
    await redis.set(constants.retry_key_prefix + "again", 1)  # tried once, as arq counts a cancelled run
    refusing = _stock(redis, max_tries=1, keep_result=0)  # as the engine runs it: no result kept
    try:
        await asyncio.wait_for(refusing.async_run(), 10)
    finally:
        await refusing.close()
    assert refusing.ctx["noted"] == [] and refusing.jobs_failed == 1  # arq refused the second try

    await adapter.enqueue_unless_present(redis, [adapter.Deferred("again", "noted", ("y",), 1, 60_000)])
    await redis.set(constants.retry_key_prefix + "again", 1)
    await adapter.allow_another_try(redis, "again")
    worker = _stock(redis, max_tries=1)
    try:
        await asyncio.wait_for(worker.async_run(), 10)
    finally:
        await worker.close()
    assert worker.ctx["noted"] == ["y"]


async def test_the_queue_reads_the_engine_relies_on(redis: ArqRedis) -> None:
    queue = constants.default_queue_name
    assert await adapter.queued(redis, queue) == 0 and await adapter.first_due_after(redis, queue, 0) is None
    jobs = [adapter.Deferred(f"q-{i}", "noted", (), due, 60_000) for i, due in enumerate((1_000, 5_000, 9_000))]
    await adapter.enqueue_unless_present(redis, jobs)
    assert await adapter.queued(redis, queue) == 3
    assert await adapter.first_due_after(redis, queue, 1_000) == 5.0  # strictly after; epoch seconds
    assert await adapter.first_due_after(redis, queue, 9_000) is None


def test_arqs_log_config_is_a_dict_config() -> None:
    config = adapter.arq_log_config()
    assert config["version"] == 1 and "arq" in config["loggers"]


# The state ArqWorker and WakingWorker keep on arq's Worker.
OUR_ATTRIBUTES = {
    "polls", "read_everything", "_claims", "_claimer",  # ArqWorker
    "idle_poll_s", "wake_channel", "_wake", "_subscribed", "_next_poll_at", "_polled_at_ms", "_saturated",  # Waking
}  # fmt: skip


async def test_our_worker_classes_add_no_attribute_arq_has(redis: ArqRedis) -> None:
    """None of our names may be one arq uses: an upgrade that adds one would silently share it."""
    stock = _stock(redis)
    ours = WakingWorker(functions=[func(_noted, name="noted")], redis_pool=redis, ctx={}, **SERIALIZERS)
    try:
        assert set(vars(ours)) - set(vars(stock)) == OUR_ATTRIBUTES  # a new attribute of ours: add it above
        clashes = OUR_ATTRIBUTES & (set(vars(stock)) | set(dir(Worker)))
        assert not clashes, f"arq now uses {clashes}: rename them in app/adapters/arq.py or app/engine/waking.py"
    finally:
        await ours.close()
        await stock.close()
