"""The waking worker's claim of due arq jobs (app.adapters.arq.claim_due): every claim of a poll in one round trip,
with arq's own rules (queued, due, in progress nowhere else). Real redis-server, real workers in-process."""

from __future__ import annotations

import asyncio
from typing import Any

from arq.connections import ArqRedis
from arq.constants import default_queue_name, in_progress_key_prefix
from arq.worker import func

from app.adapters import arq as queue
from app.engine.waking import WakingWorker
from tests.adapters.conftest import SERIALIZERS

IN_PROGRESS_MS = 60_000


async def _claim(redis: ArqRedis, ids: list[str], *, limit: int = 100, token: str = "w1:1") -> list[tuple[str, int]]:
    return await queue.claim_due(
        redis,
        queue_name=default_queue_name,
        job_ids=[i.encode() for i in ids],
        limit=limit,
        in_progress_ms=IN_PROGRESS_MS,
        token=token,
    )


async def test_only_queued_due_jobs_in_progress_nowhere_are_claimed(redis: ArqRedis) -> None:
    for job_id in ("due-1", "due-2", "running"):
        await redis.enqueue_job("noop", _job_id=job_id)
    await redis.enqueue_job("noop", _job_id="later", _defer_by=60)
    await redis.set(in_progress_key_prefix + "running", b"1")  # another worker's claim, arq's way

    claimed = await _claim(redis, ["due-1", "later", "running", "gone", "due-2"])

    assert [job_id for job_id, _ in claimed] == ["due-1", "due-2"]
    scores = {job_id: int(score) for job_id, score in await redis.zrange(default_queue_name, 0, -1, withscores=True)}
    assert claimed == [("due-1", scores[b"due-1"]), ("due-2", scores[b"due-2"])]
    assert 0 < await redis.pttl(in_progress_key_prefix + "due-1") <= IN_PROGRESS_MS
    assert not await redis.exists(in_progress_key_prefix + "later", in_progress_key_prefix + "gone")


async def test_a_claim_takes_at_most_its_limit_in_the_given_order(redis: ArqRedis) -> None:
    ids = [f"j{i}" for i in range(5)]
    for job_id in ids:
        await redis.enqueue_job("noop", _job_id=job_id)
    assert [job_id for job_id, _ in await _claim(redis, ids, limit=2)] == ["j0", "j1"]
    assert [job_id for job_id, _ in await _claim(redis, ids, limit=2, token="w2:1")] == ["j2", "j3"]
    assert await _claim(redis, ids, limit=0) == []


async def test_a_retried_claim_keeps_its_jobs_and_another_worker_gets_none(redis: ArqRedis) -> None:
    """A reply lost on the way back (the call is retried): the jobs are the retrying worker's, not orphans."""
    for job_id in ("a", "b"):
        await redis.enqueue_job("noop", _job_id=job_id)
    first = await _claim(redis, ["a", "b"], token="w1:7")
    assert await _claim(redis, ["a", "b"], token="w1:7") == first
    assert await _claim(redis, ["a", "b"], token="w2:1") == []


async def test_a_retried_claim_returns_what_it_held_although_an_earlier_id_became_claimable(redis: ArqRedis) -> None:
    for job_id in ("early", "late"):
        await redis.enqueue_job("noop", _job_id=job_id)
    await redis.set(in_progress_key_prefix + "early", b"1")  # running elsewhere at the first attempt
    assert [job_id for job_id, _ in await _claim(redis, ["early", "late"], limit=1, token="w1:3")] == ["late"]
    await redis.delete(in_progress_key_prefix + "early")  # handed back meanwhile (a worker shutting down)
    # The retry must not take `early` in place of `late`, which would leave `late` claimed and run by nobody.
    assert [job_id for job_id, _ in await _claim(redis, ["early", "late"], limit=1, token="w1:3")] == ["late"]
    assert not await redis.exists(in_progress_key_prefix + "early")


async def test_unclaim_gives_back_only_the_calls_own_claims(redis: ArqRedis) -> None:
    for job_id in ("x", "y", "z"):
        await redis.enqueue_job("noop", _job_id=job_id)
    await _claim(redis, ["x", "y"], token="w1:1")
    await _claim(redis, ["z"], token="w2:1")
    ids = [b"x", b"y", b"z"]
    assert await queue.unclaim(redis, job_ids=ids, token="w1:1") == 2
    assert not await redis.exists(in_progress_key_prefix + "x", in_progress_key_prefix + "y")
    assert await redis.exists(in_progress_key_prefix + "z")  # another call's claim stays
    assert [job_id for job_id, _ in await _claim(redis, ["x", "y", "z"], token="w3:1")] == ["x", "y"]


async def test_concurrent_workers_claim_each_job_exactly_once(redis: ArqRedis) -> None:
    ids = [f"c{i:03d}" for i in range(300)]
    for job_id in ids:
        await redis.enqueue_job("noop", _job_id=job_id)
    # Each worker claims in slices, as its polls would, in opposite orders so that they meet in the middle.
    forward = [_claim(redis, ids[i : i + 30], token=f"fw:{i}") for i in range(0, 300, 30)]
    backward = [_claim(redis, ids[::-1][i : i + 30], token=f"bw:{i}") for i in range(0, 300, 30)]
    results = await asyncio.gather(*forward, *backward)
    claimed = [job_id for result in results for job_id, _ in result]
    assert sorted(claimed) == ids  # all of them, none twice


async def _slow(ctx: dict[str, Any]) -> str:
    await asyncio.sleep(0.2)
    return "done"


async def _every_slot_free(worker: WakingWorker) -> None:
    """arq's semaphore is back to its full count (max_jobs + 1): none leaked (a bounded semaphore refuses to be
    given back more than it was taken, so none was given back twice either)."""
    for _ in range(worker.max_jobs + 1):
        assert not worker.sem.locked()
        await worker.sem.acquire()
    assert worker.sem.locked()
    for _ in range(worker.max_jobs + 1):
        worker.sem.release()


async def test_the_worker_claims_no_more_than_its_free_slots_and_gives_back_the_unused(redis: ArqRedis) -> None:
    worker = WakingWorker(
        functions=[func(_slow, name="slow")], redis_pool=redis, max_jobs=3, handle_signals=False, **SERIALIZERS
    )
    try:
        for job_id in ("s0", "s1", "s2", "s3", "s4", "s5"):
            await redis.enqueue_job("slow", _job_id=job_id)
        await redis.set(in_progress_key_prefix + "s0", b"1")  # running elsewhere

        await worker.start_jobs([b"s0", b"s1", b"s2"])  # three slots taken, s0's given back
        assert sorted(worker.tasks) == ["s1", "s2"]
        assert worker.job_counter == 2

        await worker.start_jobs([b"s3", b"s4", b"s5"])  # one slot left while s1 and s2 run
        assert sorted(worker.tasks) == ["s1", "s2", "s3"]
        assert worker.job_counter == 3

        await asyncio.wait_for(asyncio.gather(*worker.tasks.values()), 10)
        assert worker.job_counter == 0
        await _every_slot_free(worker)
        assert await redis.zscore(default_queue_name, "s1") is None  # arq finished it
        assert await redis.zscore(default_queue_name, "s4") is not None  # left queued for the next poll

        await redis.delete(in_progress_key_prefix + "s0")
        await worker.start_jobs([b"s0", b"s4", b"s5"])
        await asyncio.wait_for(asyncio.gather(*worker.tasks.values()), 10)
        assert await redis.zcard(default_queue_name) == 0
        assert worker.job_counter == 0
        await _every_slot_free(worker)
    finally:
        await worker.close()
