"""Idempotent writes: the same key and the same request within a day run once, and every retry gets the first
answer, as payment APIs do it (Stripe's `Idempotency-Key`).

The record lives in Redis, shared by every API instance, under a key per (caller, client key). The first request
claims it (SET NX, as `pending`), runs, and stores its answer (`done`) for `TTL_SECONDS`. A request that finds it
`done` gets that answer back, without anything being done again; one that finds it `pending` (a concurrent retry,
on this instance or another) waits for the answer. A request whose fingerprint (what it asks, as the transport
says it) differs from the first's is refused: a key names one request. What an answer is, and how a request is
fingerprinted, is the transport's: this module stores JSON.

An operation that fails before doing anything (the store it needs is out: `Unavailable`), or that crashes, keeps
no answer: the key is released and a retry runs afresh. A claim whose process died mid-request lapses after
`CLAIM_SECONDS`. A claim names its owner, and only the owner stores the answer or releases it (one Lua call), so a
request that outlived its claim cannot overwrite or delete the claim of the retry that took over. A request whose
client goes away runs on to its answer (shielded from the cancellation), so that a retry replays it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.platform.errors import Conflict, Invalid, Unavailable, Unprocessable

TTL_SECONDS = 24 * 3600
CLAIM_SECONDS = 60  # a request holds its key this long at most before it lapses (its process died)
WAIT_SECONDS = 10.0  # a concurrent retry waits this long for the first request's answer
POLL_SECONDS = 0.02
_KEY = re.compile(r"[\x21-\x7e]{1,255}")  # printable ASCII, no spaces, as Stripe's keys and UUIDs are
_PREFIX = "jg:idem:"
_running: set[asyncio.Task[Any]] = set()


@dataclass(frozen=True, slots=True)
class Outcome:
    answer: Any  # what the first request answered (JSON), as the transport stored it
    replayed: bool  # True: this request did nothing; the answer is the first one's


def validate_key(key: str) -> str:
    if not _KEY.fullmatch(key):
        raise Invalid(
            "Idempotency-Key must be 1 to 255 printable ASCII characters without spaces (a UUID, say)",
            code="invalid_idempotency_key",
        )
    return key


def fingerprint(*parts: object) -> str:
    """A request's fingerprint from what it asks (method, path, body; or a mutation and its arguments)."""
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _redis_key(subject: str, key: str) -> str:
    scope = hashlib.sha256(json.dumps([subject, key]).encode()).hexdigest()
    return _PREFIX + scope


async def run_once(
    redis: Redis,
    *,
    subject: str,
    key: str,
    request: str,
    operation: Callable[[], Awaitable[Any]],
    kept: Callable[[Any], bool] = lambda _: True,
) -> Outcome:
    """`operation()`'s answer, run at most once per (subject, key) within TTL_SECONDS; `request` is the
    fingerprint of what is asked. `kept(answer)` says whether an answer is stored for replay (False: the key is
    released, as for an operation that raised)."""
    name = _redis_key(subject, validate_key(key))
    owner = secrets.token_hex(8)
    pending = json.dumps({"state": "pending", "request": request, "owner": owner})
    deadline = time.monotonic() + WAIT_SECONDS
    try:
        while True:
            if await redis.set(name, pending, nx=True, ex=CLAIM_SECONDS):
                run = asyncio.ensure_future(_run(redis, name, owner, request, operation, kept))
                _running.add(run)  # the loop keeps only weak references: a shielded task must be held
                run.add_done_callback(_running.discard)
                return Outcome(await asyncio.shield(run), replayed=False)
            raw = await redis.get(name)
            if raw is None:
                continue  # released or lapsed meanwhile: claim it again
            record = json.loads(raw)
            if record["request"] != request:
                raise Unprocessable(
                    "This Idempotency-Key was used with a different request; use a new key for a new request",
                    code="idempotency_key_reused",
                )
            if record["state"] == "done":
                return Outcome(record["answer"], replayed=True)
            if time.monotonic() > deadline:
                raise Conflict(
                    "A request with this Idempotency-Key is still in progress; retry shortly",
                    code="idempotency_in_progress",
                )
            await asyncio.sleep(POLL_SECONDS)
    except RedisError as exc:
        raise Unavailable("The idempotency store (Redis) is unavailable; try again shortly") from exc


async def _run(
    redis: Redis,
    name: str,
    owner: str,
    request: str,
    operation: Callable[[], Awaitable[Any]],
    kept: Callable[[Any], bool],
) -> Any:
    try:
        answer = await operation()
    except BaseException:
        await _finish(redis, name, owner, None)
        raise
    if not kept(answer):
        await _finish(redis, name, owner, None)
        return answer
    # Done but not recorded (Redis out now): the claim lapses within CLAIM_SECONDS and a retry then runs again.
    # Answering an error here would make the client retry what did happen.
    await _finish(redis, name, owner, json.dumps({"state": "done", "request": request, "answer": answer}))
    return answer


# Store the answer (ARGV[2]; empty: release the key) only while the claim is still this owner's.
_FINISH = """
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
if cjson.decode(raw)['owner'] ~= ARGV[1] then return 0 end
if ARGV[2] == '' then redis.call('DEL', KEYS[1]) else redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3]) end
return 1
"""


async def _finish(redis: Redis, name: str, owner: str, done: str | None) -> None:
    try:
        await redis.eval(_FINISH, 1, name, owner, done or "", str(TTL_SECONDS))  # type: ignore[misc]
    except RedisError:
        pass  # the claim lapses within CLAIM_SECONDS
