"""Shared `jobStatus` subscriptions: one execution and one serialised payload per event, however many sockets.

A plain strawberry subscription runs a generator, executes the selection set and serialises the result
once per subscriber and event: about 0.2 ms of CPU each, so 1,000 dashboards watching one job cost
200 ms per event. Subscribers that send the same document with the same variables get the same bytes
(the data does not depend on who asks: every caller holds the one admin permission), so this module
runs ONE strawberry stream per distinct (document, operation, variables) — a `SharedStream` — and
writes its serialised `next` payload to every member socket: where the server allows, as one websocket
frame prepared once per event and written to each socket's transport (app.adapters.uvicorn).

Per socket it keeps what must stay per socket: authentication (checked at `connection_init`; a member
whose token has expired is skipped, and the socket is closed by its expiry task), its operation id, and
its own flow control. A socket that cannot take a frame right away (its transport is paused) gets a
writer task and a backlog holding the last few frames per job (app.api.backlog), so a client behind for a
moment still gets every change, a stalled one costs a few frames per job, and neither delays the
others. Events of one stream reach every member in order.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from graphql import FieldNode, GraphQLError, NullValueNode, OperationDefinitionNode, OperationType, VariableNode, parse
from graphql.error import GraphQLSyntaxError

from app.adapters.strawberry import ExecutionResult, PreExecutionError
from app.adapters.uvicorn import WireWriter, send_now, text_frame
from app.api.backlog import Backlog
from app.platform.aio import cancel_and_wait

log = logging.getLogger(__name__)

SHARED_FIELDS = frozenset({"jobStatus"})
_MAX_SHARED_QUERY_CHARS = 4_000  # larger documents take the ordinary per-subscriber path
_MAX_TOKENS = 2_000

Message = dict[str, Any]
Sender = Callable[[str], Coroutine[Any, Any, None]]


@dataclass(frozen=True)
class ShareKey:
    """What makes two subscriptions produce identical payloads."""

    query: str
    operation_name: str | None
    variables: str  # canonical JSON
    replay_latest: bool  # one job watched: a late joiner gets the current state at once, like the first


@lru_cache(maxsize=512)
def _shared_root(query: str, operation_name: str | None) -> tuple[str, str | None, bool] | None:
    """(field, how its `id` argument is given, whether that variable defaults to an id) when the document
    is one shareable root field, else None.

    The second item is None (no id: every job), "literal" or the name of the variable holding it.
    """
    try:
        document = parse(query, no_location=True, max_tokens=_MAX_TOKENS)
    except GraphQLSyntaxError:
        return None
    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    if operation_name is not None:
        operations = [op for op in operations if op.name is not None and op.name.value == operation_name]
    if len(operations) != 1 or operations[0].operation != OperationType.SUBSCRIPTION:
        return None
    selections = operations[0].selection_set.selections
    if len(selections) != 1 or not isinstance(selections[0], FieldNode):
        return None
    root = selections[0]
    if root.name.value not in SHARED_FIELDS or root.directives:
        return None
    id_arg = next((a for a in root.arguments or () if a.name.value == "id"), None)
    if id_arg is None or isinstance(id_arg.value, NullValueNode):
        return root.name.value, None, False
    if isinstance(id_arg.value, VariableNode):
        name = id_arg.value.name.value
        definition = next((d for d in operations[0].variable_definitions or () if d.variable.name.value == name), None)
        default = definition.default_value if definition is not None else None
        return root.name.value, name, default is not None and not isinstance(default, NullValueNode)
    return root.name.value, "literal", False


def share_key(query: object, variables: object, operation_name: object) -> ShareKey | None:
    """The key grouping this subscription with identical ones, or None when it is not shareable."""
    if not isinstance(query, str) or len(query) > _MAX_SHARED_QUERY_CHARS:
        return None
    if operation_name is not None and not isinstance(operation_name, str):
        return None
    if variables is not None and not isinstance(variables, dict):
        return None
    root = _shared_root(query, operation_name)
    if root is None:
        return None
    try:
        canonical = json.dumps(variables or {}, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError):
        return None
    _, id_source, defaults_to_an_id = root
    if id_source is None or id_source == "literal":
        watches_one = id_source == "literal"
    elif variables and id_source in variables:
        watches_one = variables[id_source] is not None  # an explicit null overrides the default
    else:
        watches_one = defaults_to_an_id
    return ShareKey(query, operation_name, canonical, watches_one)


def next_frame(operation_id: str, payload: str) -> str:
    """A graphql-transport-ws `next` message around an already serialised payload."""
    return f'{{"id":{json.dumps(operation_id)},"type":"next","payload":{payload}}}'


@dataclass(frozen=True, slots=True)
class PreparedFrame:
    """One `next` message for every member with the same operation id: its text, and the websocket frame
    carrying it, serialised once (app.adapters.uvicorn)."""

    text: str
    wire: bytes

    @classmethod
    def of(cls, text: str) -> PreparedFrame:
        return cls(text, text_frame(text))


@dataclass(eq=False)
class Member:
    """One subscribing operation on one socket."""

    operation_id: str
    send: Sender
    expires_at: float
    # The socket's live operations by id: the member is current while `operation` is the one under its
    # id (strawberry drops it when the client completes it or the socket closes, and an id can be reused).
    operations: Mapping[str, object]
    operation: object
    ended: asyncio.Future[Message | None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    backlog: Backlog[str | None, str] = field(default_factory=Backlog)
    write_wire: WireWriter | None = None  # the socket's direct writer, where the server allows one
    writer: asyncio.Task[None] | None = None
    broken: bool = False

    def offer(self, job_key: str | None, frame: PreparedFrame) -> None:
        write = self.write_wire
        if write is not None and self.writer is None and not self.broken and write(frame.wire):
            return
        self.offer_through_send(job_key, frame)

    def offer_through_send(self, job_key: str | None, frame: PreparedFrame) -> None:
        """offer() once the direct write is ruled out or has declined: the ASGI send, or the backlog."""
        if self.broken:
            return
        if self.writer is not None:
            self.backlog.push(job_key, frame.text)  # past a few unsent frames of a job, its oldest goes
            return
        coro = self.send(frame.text)
        try:
            waiting_on = send_now(coro)
        except Exception:  # the socket is gone; its handler cleans the operation up
            self.broken = True
            return
        if waiting_on is not None:
            self.writer = asyncio.create_task(self._write_later(coro, waiting_on), name="fanout-writer")

    async def _write_later(self, coro: Coroutine[Any, Any, None], waiting_on: object) -> None:
        try:
            while waiting_on is not None:
                if asyncio.isfuture(waiting_on):
                    await asyncio.wait([waiting_on])
                else:
                    await asyncio.sleep(0)
                waiting_on = send_now(coro)
            while self.backlog:
                frame = self.backlog.pop()
                await self.send(frame)
        except Exception:  # as in offer()
            self.broken = True
        finally:
            coro.close()
            self.writer = None

    async def flushed(self) -> None:
        """Wait until every frame offered so far has been written (or the socket has failed)."""
        while self.writer is not None:
            await asyncio.wait([self.writer])


StreamOpener = Callable[[], Coroutine[Any, Any, AsyncIterator[object]]]
KeyOf = Callable[[], str | None]


class SharedStream:
    """One strawberry subscription stream whose results go to every member."""

    def __init__(
        self,
        key: ShareKey,
        open_stream: StreamOpener,
        job_key: KeyOf,
        on_end: Callable[[], None],
        on_cancel: Callable[[asyncio.Task[None]], None],
    ) -> None:
        self.key = key
        self.members: set[Member] = set()
        self.latest: str | None = None
        self._open = open_stream
        self._job_key = job_key
        self._on_end = on_end
        self._on_cancel = on_cancel  # sees a cancelled task through to its end (Fanout.aclose awaits it)
        self.executions = 0
        # A fresh context: the stream outlives the socket that opened it, and must not log every
        # event under that socket's request id and user.
        self.task = asyncio.create_task(self._run(), name="fanout-stream", context=contextvars.Context())

    def join(self, member: Member) -> None:
        self.members.add(member)
        if self.key.replay_latest and self.latest is not None:
            member.offer(None, PreparedFrame.of(next_frame(member.operation_id, self.latest)))

    def leave(self, member: Member) -> None:
        self.members.discard(member)
        if member.writer is not None:
            member.writer.cancel()
            self._on_cancel(member.writer)
        if not self.members:
            self._on_end()  # at once: a subscriber arriving while the task winds down starts a new stream
            self.task.cancel()
            self._on_cancel(self.task)

    async def _run(self) -> None:
        end: Message | None = None  # None: complete
        try:
            source = await self._open()
            async with aclosing(source):  # type: ignore[type-var]
                first = True
                async for result in source:
                    if first and isinstance(result, PreExecutionError):
                        end = {"type": "error", "payload": [e.formatted for e in result.errors or []]}
                        return
                    if not isinstance(result, ExecutionResult):
                        error = GraphQLError("Incremental delivery is not supported over graphql-transport-ws")
                        end = {"type": "error", "payload": [error.formatted]}
                        return
                    first = False
                    self._deliver(self._job_key(), _payload(result))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("shared subscription stream failed")
        finally:
            self._on_end()
            for member in self.members:
                if not member.ended.done():
                    member.ended.set_result(end)

    def _deliver(self, job_key: str | None, payload: str) -> None:
        self.executions += 1
        if self.key.replay_latest:
            self.latest = payload
        frames: dict[str, PreparedFrame] = {}  # usually every client names its operation "1": one frame for all
        now = time.time()
        for member in list(self.members):
            # Nothing past a token's expiry (its socket is being closed), nor after the operation ended.
            # This and the direct write are inline, not method calls: at 1,000 sockets the calls cost a tenth
            # of the API's CPU per event (B2, bench/NOTES.md).
            if member.expires_at <= now or member.operations.get(member.operation_id) is not member.operation:
                continue
            frame = frames.get(member.operation_id)
            if frame is None:
                frame = frames[member.operation_id] = PreparedFrame.of(next_frame(member.operation_id, payload))
            write = member.write_wire
            if write is not None and member.writer is None and not member.broken and write(frame.wire):
                continue  # Member.offer, inline
            member.offer_through_send(job_key, frame)


def _payload(result: ExecutionResult) -> str:
    payload: dict[str, object] = {"data": result.data}
    if result.errors:
        payload["errors"] = [e.formatted for e in result.errors]
    if result.extensions:
        payload["extensions"] = result.extensions
    return json.dumps(payload, separators=(",", ":"))


class Fanout:
    """The shared streams of one API process, by key."""

    def __init__(self) -> None:
        self._streams: dict[ShareKey, SharedStream] = {}
        self._ending: set[asyncio.Task[None]] = set()  # cancelled, still closing their generators

    @property
    def streams(self) -> Mapping[ShareKey, SharedStream]:
        return self._streams

    def join(self, key: ShareKey, member: Member, open_stream: StreamOpener, job_key: KeyOf) -> SharedStream:
        stream = self._streams.get(key)
        if stream is None:
            stream = SharedStream(
                key, open_stream, job_key, on_end=lambda: self._forget(key, stream), on_cancel=self._wind_down
            )
            self._streams[key] = stream
        stream.join(member)
        return stream

    def _wind_down(self, task: asyncio.Task[None]) -> None:
        if not task.done():
            self._ending.add(task)
            task.add_done_callback(self._ending.discard)

    async def aclose(self) -> None:
        """End every stream and writer and wait until they have finished (at shutdown, before the hub stops)."""
        tasks: list[asyncio.Task[None]] = list(self._ending)
        for stream in list(self._streams.values()):
            tasks.append(stream.task)
            tasks.extend(m.writer for m in stream.members if m.writer is not None)
        await cancel_and_wait(*tasks)

    def _forget(self, key: ShareKey, stream: SharedStream | None) -> None:
        # A stream that ended is replaced by the next joiner's; never drop its successor.
        if self._streams.get(key) is stream:
            del self._streams[key]
