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
`CLAIM_SECONDS`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
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
    pending = json.dumps({"state": "pending", "request": request})
    deadline = time.monotonic() + WAIT_SECONDS
    try:
        while True:
            if await redis.set(name, pending, nx=True, ex=CLAIM_SECONDS):
                return Outcome(await _run(redis, name, request, operation, kept), replayed=False)
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
    redis: Redis, name: str, request: str, operation: Callable[[], Awaitable[Any]], kept: Callable[[Any], bool]
) -> Any:
    try:
        answer = await operation()
    except BaseException:
        await _release(redis, name)
        raise
    if not kept(answer):
        await _release(redis, name)
        return answer
    done = json.dumps({"state": "done", "request": request, "answer": answer})
    try:
        await redis.set(name, done, ex=TTL_SECONDS)
    except RedisError:
        # Done, but not recorded: the claim lapses within CLAIM_SECONDS and a retry then runs again. Answering
        # an error here would make the client retry what did happen.
        await _release(redis, name)
    return answer


async def _release(redis: Redis, name: str) -> None:
    try:
        await redis.delete(name)
    except RedisError:
        pass  # the claim lapses within CLAIM_SECONDS
