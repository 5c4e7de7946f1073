"""The running lease: one Redis key per job, held by exactly one run token at a time.

It is the single truth for `running`, shared by every API instance and worker: a trigger's 409, a fire's
overlap rule and the reaper all read it. Every change compares the token first, in one Lua call, so a stale
holder can never extend or drop a newer lease, and a call retried after its reply was lost finds its own lease.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import IntEnum

from redis.asyncio import Redis

KEY_PREFIX = "jg:lease:"

ACQUIRE, EXTEND = "acquire", "extend"


class Took(IntEnum):
    REFUSED = 0  # someone else's (acquire), or no longer ours (extend)
    EXTENDED = 1  # ours already; its expiry is now `ttl` away
    ACQUIRED = 2  # was free; ours now


# For each key (KEYS[i], token ARGV[2i-1], mode ARGV[2i]): "acquire" takes it when free, "extend" only when it is
# already ours; either way a lease that is ours lives `ttl` (the last ARGV) from now.
_TAKE = """
local ttl = ARGV[#ARGV]
local took = {}
for i, k in ipairs(KEYS) do
  local token, mode = ARGV[2 * i - 1], ARGV[2 * i]
  local current = redis.call('GET', k)
  if current == token then
    redis.call('PEXPIRE', k, ttl)
    took[i] = 1
  elseif current == false and mode == 'acquire' then
    redis.call('SET', k, token, 'PX', ttl)
    took[i] = 2
  else
    took[i] = 0
  end
end
return took
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE_MANY = """
local released = {}
for i, k in ipairs(KEYS) do
  if redis.call('GET', k) == ARGV[i] then
    released[i] = redis.call('DEL', k)
  else
    released[i] = 0
  end
end
return released
"""
# Each key's holder and how long its lease has left (ms; negative when there is none).
_HOLDERS_AND_TTLS = """
local found = {}
for i, k in ipairs(KEYS) do
  found[2 * i - 1] = redis.call('GET', k)
  found[2 * i] = redis.call('PTTL', k)
end
return found
"""


def key(job_id: str) -> str:
    return KEY_PREFIX + job_id


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


async def take(redis: Redis, leases: Sequence[tuple[str, str, str]], ttl: float) -> list[Took]:
    """For each (job id, token, ACQUIRE or EXTEND), in one round trip; the job ids must be distinct."""
    if not leases:
        return []
    keys = [key(job_id) for job_id, _, _ in leases]
    args = [part for _, token, mode in leases for part in (token, mode)]
    took = await redis.eval(_TAKE, len(keys), *keys, *args, str(_ms(ttl)))  # type: ignore[misc]
    return [Took(int(t)) for t in took]


async def acquire(redis: Redis, job_id: str, token: str, ttl: float) -> bool:
    return bool(await take(redis, [(job_id, token, ACQUIRE)], ttl) != [Took.REFUSED])


async def renew(redis: Redis, job_id: str, token: str, ttl: float) -> bool:
    return bool(await redis.eval(_RENEW, 1, key(job_id), token, str(_ms(ttl))))  # type: ignore[misc]


async def release(redis: Redis, job_id: str, token: str) -> bool:
    return (await release_many(redis, [(job_id, token)])) == [True]


async def release_many(redis: Redis, leases: Sequence[tuple[str, str]]) -> list[bool]:
    """Release each (job id, token) that still holds its lease, in one round trip."""
    if not leases:
        return []
    keys = [key(job_id) for job_id, _ in leases]
    released = await redis.eval(_RELEASE_MANY, len(keys), *keys, *(t for _, t in leases))  # type: ignore[misc]
    return [bool(r) for r in released]


async def holder(redis: Redis, job_id: str) -> str | None:
    return _text(await redis.get(key(job_id)))


async def holders(redis: Redis, job_ids: Sequence[str]) -> dict[str, str | None]:
    """The token holding each job's lease, in one round trip."""
    if not job_ids:
        return {}
    values = await redis.mget([key(j) for j in job_ids])
    return {j: _text(v) for j, v in zip(job_ids, values, strict=True)}


async def holders_and_ttls(redis: Redis, job_ids: Sequence[str]) -> dict[str, tuple[str | None, int]]:
    """Each job's lease holder and how many ms its lease has left (negative: none), in one round trip."""
    if not job_ids:
        return {}
    keys = [key(j) for j in job_ids]
    flat = await redis.eval(_HOLDERS_AND_TTLS, len(keys), *keys)  # type: ignore[misc]
    return {j: (_text(flat[2 * i]), int(flat[2 * i + 1])) for i, j in enumerate(job_ids)}
