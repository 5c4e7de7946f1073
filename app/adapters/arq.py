"""arq 0.28.0: where jobs-gateway reaches past arq's public API.

arq's public API runs a worker that polls on a fixed delay and claims due jobs one at a time. The engine needs
more from it, and this module is the only place that takes it:
- `ArqWorker`, a `Worker` whose poll loop waits through a hook (`wait_for_work`) instead of sleeping
  `poll_delay`, whose claims of due jobs go through one Lua call (`claim_due`), and whose slots (arq's
  `sem` and `job_counter`) the engine can take and give back for runs arq does not start itself (triggers).
  Its `main` is a copy of `Worker.main`; the contract test pins the source it was copied from.
- arq's Redis protocol (job record, queue sorted set, in-progress, retry and result keys), written directly by
  Lua scripts that do in one round trip what `ArqRedis.enqueue_job` and `Worker.start_jobs` do in several.

Everything here is pinned by tests/adapters/test_arq_contract.py, which fails first, naming what changed,
when an arq upgrade moves any of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from arq import Worker
from arq.connections import ArqRedis, create_pool, log_redis_info
from arq.constants import in_progress_key_prefix, job_key_prefix, result_key_prefix, retry_key_prefix
from arq.jobs import DeserializationError, deserialize_job, serialize_job
from arq.logs import default_log_config
from arq.utils import timestamp_ms
from arq.worker import logger as arq_logger
from redis import Redis as SyncRedis
from redis.asyncio import Redis

# The `ctx` key under which an ArqWorker puts itself, so that its start-up hook finds it. A stock arq Worker
# (arq's own CLI) leaves it unset.
WORKER_KEY = "arq_worker"


class ArqWorker(Worker):
    """arq's Worker with a poll loop the engine drives and slots the engine shares."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ctx[WORKER_KEY] = self
        self.polls = 0  # how often the queue was read (tests, metrics)
        self.read_everything = True  # the last poll read fewer ids than its limit
        self._claims = 0
        self._claimer = uuid.uuid4().hex

    # --- Hooks for the engine ---------------------------------------------------------------------------------

    def polling(self) -> contextlib.AbstractAsyncContextManager[None]:
        """Entered once start-up is done, around the poll loop (a wake-up listener, say)."""
        return contextlib.nullcontext()

    def before_poll(self) -> None:
        """Called right before each read of the queue."""

    async def wait_for_work(self) -> None:
        """Between two polls; arq's own loop sleeps `poll_delay`."""
        await asyncio.sleep(self.poll_delay_s)

    def slot_freed(self) -> None:
        """A job or run of this worker ended and gave its slot back."""

    # --- arq's main loop, with the wait between polls as a hook -------------------------------------------------

    async def main(self) -> None:
        """A copy of arq's `Worker.main` whose `async for _ in poll(self.poll_delay_s)` is a loop around
        `wait_for_work()`. Re-copy it when the contract test says `Worker.main` changed."""
        if self._pool is None:
            self._pool = await create_pool(
                self.redis_settings,
                job_deserializer=self.job_deserializer,
                job_serializer=self.job_serializer,
                default_queue_name=self.queue_name,
                expires_extra_ms=self.expires_extra_ms,
            )
        arq_logger.info("Starting worker for %d functions: %s", len(self.functions), ", ".join(self.functions))
        await log_redis_info(self.pool, arq_logger.info)
        self.ctx["redis"] = self.pool
        if self.on_startup:
            await self.on_startup(self.ctx)
        async with self.polling():
            while True:
                self.read_everything = True
                self.before_poll()
                await self._poll_iteration()
                self.polls += 1
                if self.burst:
                    if 0 <= self.max_burst_jobs <= self._jobs_started():
                        await asyncio.gather(*self.tasks.values())
                        return
                    if await self.pool.zcard(self.queue_name) == 0:
                        await asyncio.gather(*self.tasks.values())
                        return
                await self.wait_for_work()

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """arq's start_jobs with every claim in one round trip (`claim_due`) instead of four per job, one job
        after another. The slots are taken first, as arq takes its slot before each claim, and the ones left
        unused given back (not a run ending: no `slot_freed`)."""
        self.read_everything = len(job_ids) < self.queue_read_limit
        slots = 0
        while slots < len(job_ids) and await self.try_take_slot():
            slots += 1
        claimed: list[tuple[str, int]] = []
        self._claims += 1
        token = f"{self._claimer}:{self._claims}"
        try:
            if slots:
                claimed = await claim_due(
                    self.pool,
                    queue_name=self.queue_name,
                    job_ids=job_ids,
                    limit=slots,
                    in_progress_ms=int(self.in_progress_timeout_s * 1000),
                    token=token,
                )
        except BaseException:
            # The script may have run although its answer never came (cancelled, or failed past the retries):
            # what it claimed would otherwise stay "in progress" for arq's whole timeout, run by nobody.
            # Bounded: a worker whose Redis is gone is on its way out, and must not wait out a second budget.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(unclaim(self.pool, job_ids=job_ids, token=token)), 2.0)
            raise
        finally:
            for _ in range(slots - len(claimed)):
                Worker._release_sem_dec_counter_on_complete(self)
        for job_id, score in claimed:
            self.adopt(job_id, self.loop.create_task(self.run_job(job_id, score)))

    def _release_sem_dec_counter_on_complete(self) -> None:
        super()._release_sem_dec_counter_on_complete()
        self.slot_freed()

    # --- Slots, shared by arq's jobs and the engine's own runs -------------------------------------------------

    @property
    def accepting(self) -> bool:
        """Taking new jobs (False once stopping)."""
        return self.allow_pick_jobs

    def stop_accepting(self) -> None:
        self.allow_pick_jobs = False

    def full(self) -> bool:
        return self.job_counter >= self.max_jobs

    async def try_take_slot(self) -> bool:
        """Take a free slot without waiting: a free semaphore is acquired without yielding, so nothing else can
        take the slot meanwhile."""
        if not self.allow_pick_jobs or self.job_counter >= self.max_jobs or self.sem.locked():
            return False
        await self.sem.acquire()
        self.job_counter += 1
        return True

    async def take_slot(self, retry_every: float) -> bool:
        """Take a slot as arq does before a claim, waiting for one; False when the worker stops meanwhile."""
        while self.allow_pick_jobs:
            await self.sem.acquire()
            if self.job_counter < self.max_jobs:
                self.job_counter += 1
                return True
            self.sem.release()
            await asyncio.sleep(retry_every)
        return False

    async def wait_for_free_slot(self, check_every: float) -> None:
        """Until a slot is free or the worker stops (arq offers no event for either)."""
        while self.allow_pick_jobs and self.job_counter >= self.max_jobs:  # noqa: ASYNC110
            await asyncio.sleep(check_every)

    def release_slot(self) -> None:
        """Give back a slot taken with `try_take_slot` or `take_slot`."""
        self._release_sem_dec_counter_on_complete()

    def adopt(self, name: str, task: asyncio.Task[Any]) -> None:
        """Treat `task`, running in a slot already taken, as one of arq's jobs: its poll loop reaps it, shutdown
        waits for it and then cancels it, and its slot is given back when it ends."""
        self.tasks[name] = task
        task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())

    def running(self) -> list[asyncio.Task[Any]]:
        """This worker's jobs and runs still going."""
        return [t for t in self.tasks.values() if not t.done()]

    @property
    def poll_task(self) -> asyncio.Task[None] | None:
        """The task running the poll loop (`async_run`'s or `run`'s), once started."""
        return self.main_task

    @property
    def poll_delay(self) -> float:
        return self.poll_delay_s


def arq_log_config() -> dict[str, Any]:
    """The logging set-up arq's own CLI installs (a standalone worker logs as `arq worker` would, until the
    application's own configuration replaces it)."""
    config: dict[str, Any] = default_log_config(verbose=False)
    return config


# --- arq's Redis protocol -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Deferred:
    """An arq job to enqueue: `function(*args)` under `job_id`, due at `score_ms`, its record kept `expires_ms`."""

    job_id: str
    function: str
    args: tuple[Any, ...]
    score_ms: int
    expires_ms: int


# arq's enqueue_job in one round trip (it takes three): queue the job unless its id is queued, running or kept
# as a result (the same dedupe), then publish the due time on ARGV[5] (when given). Batched in a pipeline.
_ENQUEUE_UNLESS_PRESENT = """
if redis.call('EXISTS', KEYS[1], KEYS[2]) > 0 then
  return 0
end
redis.call('PSETEX', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[4])
if ARGV[5] ~= '' then
  redis.call('PUBLISH', ARGV[5], ARGV[3])
end
return 1
"""


async def enqueue_unless_present(
    redis: ArqRedis, jobs: Sequence[Deferred], *, announce_on: str | None = None
) -> list[bool]:
    """Enqueue each job as `ArqRedis.enqueue_job(..., _job_id=, _defer_until=, _expires=)` would, in one round
    trip; False for a job whose id arq already holds. `announce_on`: a channel to publish each due time on."""
    if not jobs:
        return []
    now_ms = timestamp_ms()
    script = redis.register_script(_ENQUEUE_UNLESS_PRESENT)
    async with redis.pipeline(transaction=False) as pipe:
        for job in jobs:
            record = serialize_job(job.function, job.args, {}, None, now_ms, serializer=redis.job_serializer)
            keys = [job_key_prefix + job.job_id, result_key_prefix + job.job_id, redis.default_queue_name]
            args: list[bytes | str | int] = [job.expires_ms, record, job.score_ms, job.job_id, announce_on or ""]
            await script(keys=keys, args=args, client=pipe)
        return [bool(x) for x in await pipe.execute()]


# arq's claim of a queued job (Worker.start_jobs: WATCH, EXISTS, ZSCORE, then MULTI/PSETEX/EXEC, four round
# trips per job, one job after another) for many at once: a job is claimed when it is still queued, due, and
# in progress nowhere; at most ARGV[4] of them. The in-progress key holds the call's token, so that a call
# retried after its reply was lost finds the jobs it claimed still its own: they are counted first, so the
# retry returns them all even if another id has become claimable meanwhile.
_CLAIM_DUE = """
local now, token, ttl, limit, prefix = tonumber(ARGV[1]), ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]
local mine, held = {}, 0
for i = 6, #ARGV do
  if redis.call('GET', prefix .. ARGV[i]) == token then
    mine[ARGV[i]] = true
    held = held + 1
  end
end
local claimed = {}
for i = 6, #ARGV do
  local id = ARGV[i]
  local score = redis.call('ZSCORE', KEYS[1], id)
  if score then
    if mine[id] then
      claimed[#claimed + 1] = id
      claimed[#claimed + 1] = score
    elseif held < limit and tonumber(score) <= now and redis.call('SET', prefix .. id, token, 'NX', 'PX', ttl) then
      held = held + 1
      claimed[#claimed + 1] = id
      claimed[#claimed + 1] = score
    end
  end
end
return claimed
"""

# Undo the claims a call made, for a caller that will not run them (its claim failed or was cancelled
# after the script may have run): without it they would stay "in progress" for arq's whole timeout.
_UNCLAIM = """
local n = 0
for i = 2, #ARGV do
  if redis.call('GET', ARGV[1] .. ARGV[i]) == KEYS[1] then
    redis.call('DEL', ARGV[1] .. ARGV[i])
    n = n + 1
  end
end
return n
"""


async def claim_due(
    redis: Redis, *, queue_name: str, job_ids: Sequence[bytes], limit: int, in_progress_ms: int, token: str
) -> list[tuple[str, int]]:
    """Mark up to `limit` of these arq jobs in progress for this worker, as arq's own claim would (the ones
    queued, due by this process's clock, and not in progress elsewhere): their (id, score), in the given order."""
    if not job_ids or limit <= 0:
        return []
    args: list[bytes | str | int] = [timestamp_ms(), token, in_progress_ms, limit, in_progress_key_prefix, *job_ids]
    flat = await redis.register_script(_CLAIM_DUE)(keys=[queue_name], args=args)
    return [(flat[i].decode(), int(float(flat[i + 1]))) for i in range(0, len(flat), 2)]


async def unclaim(redis: Redis, *, job_ids: Sequence[bytes], token: str) -> int:
    """Give back what a `claim_due` call with this token claimed among these ids; how many it had."""
    if not job_ids:
        return 0
    args: list[bytes | str] = [in_progress_key_prefix, *job_ids]
    return int(await redis.register_script(_UNCLAIM)(keys=[token], args=args))


async def queued(redis: Redis, queue_name: str) -> int:
    """How many jobs arq's queue holds (due, deferred, or running: arq removes a job when it ends)."""
    return int(await redis.zcard(queue_name))


def queued_now(client: SyncRedis, queue_name: str) -> int:
    """`queued` for a synchronous client (a metrics server's thread)."""
    return int(client.zcard(queue_name))  # type: ignore[arg-type]


async def first_due_after(redis: Redis, queue_name: str, after_ms: int) -> float | None:
    """When the earliest job due after `after_ms` (epoch ms) comes due (epoch seconds), or None."""
    found = await redis.zrangebyscore(queue_name, min=f"({after_ms}", max="+inf", start=0, num=1, withscores=True)
    return float(found[0][1]) / 1000 if found else None


async def exist(redis: Redis, job_ids: Sequence[str]) -> list[bool]:
    """Whether arq still holds each job (queued or running), in one round trip."""
    if not job_ids:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.exists(job_key_prefix + job_id)
        return [bool(x) for x in await pipe.execute()]


async def forget(redis: Redis, queue_name: str, job_id: str) -> None:
    """Remove every trace of an arq job. A job whose worker was killed otherwise stays at the head of the queue,
    marked in progress for arq's whole timeout, and enough of them starve every worker."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.zrem(queue_name, job_id)
        pipe.delete(job_key_prefix + job_id, in_progress_key_prefix + job_id, retry_key_prefix + job_id)
        await pipe.execute()


# Take a queued job out unless a worker has claimed it: its record (GET) and its place in the queue, atomically.
_WITHDRAW = """
if redis.call('EXISTS', KEYS[3]) == 1 then
  return false
end
local record = redis.call('GET', KEYS[1])
if not record then
  return false
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return record
"""


async def withdraw(redis: ArqRedis, job_id: str) -> tuple[Any, ...] | None:
    """Take a job that no worker has claimed out of the queue, as if never enqueued: its arguments, or None
    when it is gone or a worker has it (arq's `Job.abort` cannot do this: it takes effect only once a worker
    polls the job, which for a deferred job is when it comes due)."""
    keys = [job_key_prefix + job_id, redis.default_queue_name, in_progress_key_prefix + job_id]
    record = await redis.eval(_WITHDRAW, len(keys), *keys, job_id)  # type: ignore[misc]
    if not record:
        return None
    try:
        return tuple(deserialize_job(record, deserializer=redis.job_deserializer).args)
    except DeserializationError:
        # A record no worker of ours can read (planted, or from an unknown writer): withdrawn, and nothing to start.
        return None


async def allow_another_try(redis: Redis, job_id: str) -> None:
    """Let arq deliver a job once more although its tries are used up: arq keeps a job cancelled by a worker's
    shutdown queued for a retry and counts tries in this key, so the next worker would refuse the next try."""
    await redis.delete(retry_key_prefix + job_id)
