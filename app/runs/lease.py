"""The running lease: one Redis key per job, held by exactly one run token at a time.

It is the single truth for `running`, shared by every API instance and worker. Renewal and release
compare the token first (in one Lua script), so a stale holder can never extend or drop a newer lease.
"""

from __future__ import annotations

from collections.abc import Sequence

from redis.asyncio import Redis

KEY_PREFIX = "jg:lease:"

# Succeeds when the key is free or already ours, so that a client retry of a SET whose reply was
# lost does not report our own lease as someone else's.
_ACQUIRE = """
local current = redis.call('GET', KEYS[1])
if current == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if current == ARGV[1] then
  return 1
end
return 0
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# _ACQUIRE and _RELEASE over many keys at once (KEYS[i] with token ARGV[i]); one reply per key.
_ACQUIRE_MANY = """
local ttl = ARGV[#KEYS + 1]
local won = {}
for i, k in ipairs(KEYS) do
  local current = redis.call('GET', k)
  if current == false then
    redis.call('SET', k, ARGV[i], 'PX', ttl)
    won[i] = 1
  elseif current == ARGV[i] then
    won[i] = 1
  else
    won[i] = 0
  end
end
return won
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


def key(job_id: str) -> str:
    return KEY_PREFIX + job_id


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


async def acquire(redis: Redis, job_id: str, token: str, ttl: float) -> bool:
    return bool(await redis.eval(_ACQUIRE, 1, key(job_id), token, str(_ms(ttl))))  # type: ignore[misc]


async def renew(redis: Redis, job_id: str, token: str, ttl: float) -> bool:
    return bool(await redis.eval(_RENEW, 1, key(job_id), token, str(_ms(ttl))))  # type: ignore[misc]


async def release(redis: Redis, job_id: str, token: str) -> bool:
    return bool(await redis.eval(_RELEASE, 1, key(job_id), token))  # type: ignore[misc]


async def holder(redis: Redis, job_id: str) -> str | None:
    value = await redis.get(key(job_id))
    return value.decode() if isinstance(value, bytes) else value


async def holders(redis: Redis, job_ids: Sequence[str]) -> dict[str, str | None]:
    """The token holding each job's lease, in one round trip."""
    if not job_ids:
        return {}
    values = await redis.mget([key(j) for j in job_ids])
    return {j: (v.decode() if isinstance(v, bytes) else v) for j, v in zip(job_ids, values, strict=True)}


async def acquire_many(redis: Redis, leases: Sequence[tuple[str, str]], ttl: float) -> list[bool]:
    """acquire() for many (job id, token) pairs in one round trip; the job ids must be distinct."""
    if not leases:
        return []
    keys = [key(job_id) for job_id, _ in leases]
    won = await redis.eval(_ACQUIRE_MANY, len(keys), *keys, *(t for _, t in leases), str(_ms(ttl)))  # type: ignore[misc]
    return [bool(w) for w in won]


async def release_many(redis: Redis, leases: Sequence[tuple[str, str]]) -> list[bool]:
    """release() for many (job id, token) pairs in one round trip."""
    if not leases:
        return []
    keys = [key(job_id) for job_id, _ in leases]
    released = await redis.eval(_RELEASE_MANY, len(keys), *keys, *(t for _, t in leases))  # type: ignore[misc]
    return [bool(r) for r in released]
