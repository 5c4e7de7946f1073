"""The running lease: one Redis key per job, held by exactly one run token at a time.

It is the single truth for `running`, shared by every API instance and worker: a trigger's 409, a fire's
overlap rule and the reaper all read it. Every change compares the token first, in one Lua call, so a stale
holder can never extend or drop a newer lease, and a call retried after its reply was lost finds its own lease.

Beside it, per job, a cancel request naming the token it is for (app.engine.cancels) and the fire buffered behind
the running run (overlap policy buffer_one); the scripts here read them with the lease, in the same call. A run's
retries keep the lease: it goes from one attempt's token to the next (`finish`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

from redis.asyncio import Redis

KEY_PREFIX = "jg:lease:"
# Beside each job's lease: a cancel request against the token holding it ("<token>\n<details>", app.engine.cancels),
# and the one fire waiting for the running run to end (overlap policy buffer_one).
CANCEL_PREFIX = "jg:cancel:"
BUFFER_PREFIX = "jg:buffered:"
# A buffered fire waits at most this long for the run before it (then it is forgotten, as never buffered).
BUFFER_TTL_SECONDS = 24 * 3600.0

# acquire: take it when free; extend: only when ours already; buffer (a buffer_one fire): take it when free, else
# become the job's buffered fire unless one is buffered already.
ACQUIRE, EXTEND, BUFFER = "acquire", "extend", "buffer"


class Took(IntEnum):
    REFUSED = 0  # someone else's (acquire), or no longer ours (extend)
    EXTENDED = 1  # ours already; its expiry is now `ttl` away
    ACQUIRED = 2  # was free; ours now
    CANCELLED = 3  # a cancel was asked for this token before it started: it does not start (its end releases it)
    BUFFERED = 4  # held by a run; this fire waits for it to end (buffer_one)


# For each job i, KEYS[3i-2..3i] = lease, cancel request, buffered fire; ARGV[3i-2..3i] = token, mode, this fire's
# instant (buffer mode); then the lease's ttl and a buffered fire's. A lease that is ours (or taken) lives `ttl`
# from now.
_TAKE = """
local ttl, buffer_ttl = ARGV[#ARGV - 1], ARGV[#ARGV]
local took = {}
for i = 1, #KEYS / 3 do
  local lease, cancel, buffer = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local token, mode, fire = ARGV[3 * i - 2], ARGV[3 * i - 1], ARGV[3 * i]
  local current = redis.call('GET', lease)
  local asked = redis.call('GET', cancel)
  if asked and string.sub(asked, 1, #token + 1) == token .. '\\n' then
    took[i] = 3
  elseif current == token then
    redis.call('PEXPIRE', lease, ttl)
    took[i] = 1
  elseif current == false and mode ~= 'extend' then
    redis.call('SET', lease, token, 'PX', ttl)
    took[i] = 2
  elseif mode == 'buffer' and current ~= false and redis.call('SET', buffer, fire, 'NX', 'PX', buffer_ttl) then
    took[i] = 4
  else
    took[i] = 0
  end
end
return took
"""
# Renew our lease; and say so when a cancel was asked for us meanwhile (its details), keeping that request alive
# as long as the lease: the keeper's fallback for a cancel whose pub/sub message this process missed.
_RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
local asked = redis.call('GET', KEYS[2])
if asked and string.sub(asked, 1, #ARGV[1] + 1) == ARGV[1] .. '\\n' then
  redis.call('PEXPIRE', KEYS[2], ARGV[2] * 2)
  return string.sub(asked, #ARGV[1] + 2)
end
return 1
"""
# A run ends (KEYS[3i-2..3i] = lease, cancel request, buffered fire; ARGV[5i-4..5i] = its token, the next
# attempt's token or '', that one's ttl, a token for a buffered fire, that one's ttl). With a next attempt and no
# cancel asked for this token, the lease goes to the next attempt ('r'; 't' when someone else holds it by now).
# Otherwise it is released ('d', or 'c' when a cancel was asked, which is dropped with it), and a fire buffered
# meanwhile takes it at once ('b' followed by its instant): nothing else can start between the two.
_FINISH = """
local out = {}
for i = 1, #KEYS / 3 do
  local lease, cancel, buffer = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local token, following, following_ttl = ARGV[5 * i - 4], ARGV[5 * i - 3], ARGV[5 * i - 2]
  local buffered_token, buffered_ttl = ARGV[5 * i - 1], ARGV[5 * i]
  local current = redis.call('GET', lease)
  local asked = redis.call('GET', cancel)
  local cancelled = asked and string.sub(asked, 1, #token + 1) == token .. '\\n'
  if following ~= '' and not cancelled then
    if current == token or current == false then
      redis.call('SET', lease, following, 'PX', following_ttl)
      out[i] = 'r'
    else
      out[i] = 't'
    end
  else
    if current == token then
      redis.call('DEL', lease)
      current = false
    end
    out[i] = 'd'
    if cancelled then
      redis.call('DEL', cancel)
      out[i] = 'c'
    end
    if current == false then
      local fire = redis.call('GET', buffer)
      if fire then
        redis.call('DEL', buffer)
        redis.call('SET', lease, buffered_token, 'PX', buffered_ttl)
        out[i] = 'b' .. fire
      end
    end
  end
end
return out
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


def cancel_key(job_id: str) -> str:
    return CANCEL_PREFIX + job_id


def buffer_key(job_id: str) -> str:
    return BUFFER_PREFIX + job_id


def _keys(job_id: str) -> tuple[str, str, str]:
    return key(job_id), cancel_key(job_id), buffer_key(job_id)


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


@dataclass(frozen=True, slots=True)
class Want:
    """A lease wanted for a run about to start: ACQUIRE, EXTEND or BUFFER (`fire`: the fire's instant, buffered)."""

    job_id: str
    token: str
    mode: str
    fire: str = ""


async def take(redis: Redis, wanted: Sequence[Want], ttl: float) -> list[Took]:
    """For each lease wanted, in one round trip; the job ids must be distinct."""
    if not wanted:
        return []
    keys = [k for w in wanted for k in _keys(w.job_id)]
    args = [part for w in wanted for part in (w.token, w.mode, w.fire)]
    took = await redis.eval(  # type: ignore[misc]
        _TAKE, len(keys), *keys, *args, str(_ms(ttl)), str(_ms(BUFFER_TTL_SECONDS))
    )
    return [Took(int(t)) for t in took]


async def acquire(redis: Redis, job_id: str, token: str, ttl: float) -> bool:
    return (await take(redis, [Want(job_id, token, ACQUIRE)], ttl))[0] in (Took.ACQUIRED, Took.EXTENDED)


async def renew(redis: Redis, job_id: str, token: str, ttl: float) -> bool | str:
    """True: renewed; False: not ours any more; a string: renewed, and a cancel was asked (its details)."""
    keys = [key(job_id), cancel_key(job_id)]
    renewed = await redis.eval(_RENEW, len(keys), *keys, token, str(_ms(ttl)))  # type: ignore[misc]
    if isinstance(renewed, bytes | str):
        return _text(renewed) or ""
    return bool(renewed)


@dataclass(frozen=True, slots=True)
class Finish:
    """A run that ends: its lease goes to its next attempt (`following`, for `following_ttl` seconds) or is
    released, in which case a buffered fire takes it as `buffered_token`."""

    job_id: str
    token: str
    following: str | None = None
    following_ttl: float = 0.0
    buffered_token: str = ""
    buffered_ttl: float = 0.0


@dataclass(frozen=True, slots=True)
class Finished:
    retry: bool = False  # the next attempt holds the lease now
    cancelled: bool = False  # a cancel was asked for the run: no next attempt
    buffered_fire: str | None = None  # a buffered fire's instant, whose start holds the lease now


async def finish(redis: Redis, runs: Sequence[Finish]) -> list[Finished]:
    """For each run that ends, in one round trip (the job ids must be distinct)."""
    if not runs:
        return []
    keys = [k for r in runs for k in _keys(r.job_id)]
    args: list[str] = []
    for r in runs:
        args += [r.token, r.following or "", str(_ms(r.following_ttl)), r.buffered_token, str(_ms(r.buffered_ttl))]
    out = await redis.eval(_FINISH, len(keys), *keys, *args)  # type: ignore[misc]
    done: list[Finished] = []
    for raw in out:
        code = _text(raw) or ""
        if code.startswith("b"):
            done.append(Finished(buffered_fire=code[1:]))
        else:
            done.append(Finished(retry=code == "r", cancelled=code == "c"))
    return done


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


async def holders_and_cancels(redis: Redis, job_ids: Sequence[str]) -> dict[str, tuple[str | None, bool]]:
    """Each job's lease holder and whether a cancel was asked for it (it is still stopping), in one round trip."""
    if not job_ids:
        return {}
    values = await redis.mget([k for j in job_ids for k in (key(j), cancel_key(j))])
    found: dict[str, tuple[str | None, bool]] = {}
    for i, job_id in enumerate(job_ids):
        token, asked = _text(values[2 * i]), _text(values[2 * i + 1])
        found[job_id] = (token, token is not None and asked is not None and asked.startswith(token + "\n"))
    return found


async def holders_and_ttls(redis: Redis, job_ids: Sequence[str]) -> dict[str, tuple[str | None, int]]:
    """Each job's lease holder and how many ms its lease has left (negative: none), in one round trip."""
    if not job_ids:
        return {}
    keys = [key(j) for j in job_ids]
    flat = await redis.eval(_HOLDERS_AND_TTLS, len(keys), *keys)  # type: ignore[misc]
    return {j: (_text(flat[2 * i]), int(flat[2 * i + 1])) for i, j in enumerate(job_ids)}
