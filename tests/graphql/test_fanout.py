"""Identical `jobStatus` subscriptions share one execution and one serialised payload (app.api.fanout)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any, Literal

import pytest
import structlog
from strawberry.types.execution import ExecutionResult
from websockets.exceptions import ConnectionClosed

from app.api.backlog import PER_JOB
from app.api.fanout import Fanout, Member, PreparedFrame, next_frame, share_key
from app.engine import leases
from app.platform.config import Settings
from app.platform.runtime import Runtime
from app.runs import service as runs_service
from tests.factories import make_job
from tests.support.subscriptions import JOB, STATUS, next_raw, served, set_running, standalone, state_of, subscriber

OTHER = 'subscription { jobStatus(id: "metadata-sync") { id running } }'
DEFAULTED = 'subscription S($id: ID = "metadata-sync") { jobStatus(id: $id) { id running } }'
WITH_LOGS = (
    "subscription S($id: ID) { jobStatus(id: $id) { id running "
    "logs(limit: 5) { ... on JobLogPage { total logs { id } } } } }"
)


async def test_identical_subscriptions_share_one_execution_and_one_payload(settings: Settings) -> None:
    async with served(settings) as (app, url), AsyncExitStack() as stack:
        rt: Runtime = app.state.runtime
        fanout: Fanout = app.state.fanout
        await asyncio.wait_for(app.state.hub.connected.wait(), 5)
        same = [
            await stack.enter_async_context(await subscriber(url, settings, STATUS, {"id": JOB})) for _ in range(25)
        ]
        other = await stack.enter_async_context(await subscriber(url, settings, OTHER, {}))
        firsts = [await next_raw(ws) for ws in same]
        assert len(set(firsts)) == 1  # byte for byte the same frame
        assert state_of(firsts[0]) == {"id": JOB, "running": False, "lastResult": None, "enabled": True}
        assert state_of(await next_raw(other)) == {"id": JOB, "running": False}
        assert len(fanout.streams) == 2  # one per distinct document and variables, not one per socket

        for running in (True, False, True):
            await set_running(rt, running)
            frames = [await next_raw(ws) for ws in same]
            assert len(set(frames)) == 1
            assert state_of(frames[0])["running"] is running
            assert state_of(await next_raw(other))["running"] is running

        shared = next(s for s in fanout.streams.values() if s.key.query == STATUS)
        assert len(shared.members) == 25
        assert shared.executions == 4  # the first state and three changes, whatever the member count

        # A late subscriber gets the current state at once, from the shared stream's latest payload.
        late = await stack.enter_async_context(await subscriber(url, settings, STATUS, {"id": JOB}))
        assert state_of(await next_raw(late))["running"] is True
        assert shared.executions == 4
        await rt.redis.delete(leases.key(JOB))

    assert fanout.streams == {}  # every socket gone: no stream, no hub mailbox left behind
    assert not app.state.hub._mailboxes


async def test_shared_and_unshared_paths_answer_an_unknown_job_alike(settings: Settings) -> None:
    unshared = "subscription S($id: ID) { ... on Subscription { jobStatus(id: $id) { id running } } }"
    shared = "subscription S($id: ID) { jobStatus(id: $id) { id running } }"
    assert share_key(unshared, {"id": "nope"}, None) is None
    assert share_key(shared, {"id": "nope"}, None) is not None
    answers = []
    async with served(settings) as (_, url):
        for query in (unshared, shared):
            async with await subscriber(url, settings, query, {"id": "nope"}) as ws:
                messages = [json.loads(await next_raw(ws))]
                while messages[-1]["type"] == "next":
                    messages.append(json.loads(await next_raw(ws)))
            for m in messages:
                for error in m.get("payload", {}).get("errors", []) if isinstance(m.get("payload"), dict) else []:
                    error.pop("locations", None)
            answers.append(messages)
    assert answers[0] == answers[1]
    assert answers[1][0]["payload"]["errors"][0]["extensions"]["code"] == "NOT_FOUND"
    assert answers[1][-1]["type"] == "complete"


def test_only_single_root_jobstatus_subscriptions_are_shared() -> None:
    assert share_key(STATUS, {"id": JOB}, None) is not None
    assert share_key(STATUS, {"id": JOB}, "S") is not None
    assert share_key(STATUS, {"id": JOB}, "Other") is None
    assert share_key("subscription { jobStatus { id } }", None, None) == share_key(
        "subscription { jobStatus { id } }", {}, None
    )
    assert share_key("{ jobs { id } }", None, None) is None
    assert share_key("subscription { jobStatus { id } a: jobStatus { id } }", None, None) is None
    assert share_key("subscription {", None, None) is None
    # Same variables in another order: the same stream. Another job: another stream.
    a = share_key(STATUS, {"id": JOB, "x": 1}, None)
    assert a == share_key(STATUS, {"x": 1, "id": JOB}, None)
    assert a != share_key(STATUS, {"id": "other"}, None)
    # Only a stream watching one job replays its latest state to a late subscriber.
    assert a is not None and a.replay_latest
    assert not share_key(STATUS, {"id": None}, None).replay_latest  # type: ignore[union-attr]
    assert share_key(OTHER, None, None).replay_latest  # type: ignore[union-attr]


def test_a_variable_default_id_counts_as_watching_one_job() -> None:
    # No value given: the default applies, one job is watched, a late joiner is owed its state.
    assert share_key(DEFAULTED, {}, None).replay_latest  # type: ignore[union-attr]
    assert share_key(DEFAULTED, None, None).replay_latest  # type: ignore[union-attr]
    assert share_key(DEFAULTED, {"id": "other"}, None).replay_latest  # type: ignore[union-attr]
    # An explicit null overrides the default (GraphQL's rule): every job, no replay.
    assert not share_key(DEFAULTED, {"id": None}, None).replay_latest  # type: ignore[union-attr]
    null_default = "subscription S($id: ID = null) { jobStatus(id: $id) { id } }"
    assert not share_key(null_default, {}, None).replay_latest  # type: ignore[union-attr]


async def test_a_late_joiner_of_a_defaulted_id_gets_the_current_state_at_once(settings: Settings) -> None:
    async with served(settings) as (app, url), AsyncExitStack() as stack:
        await asyncio.wait_for(app.state.hub.connected.wait(), 5)
        first = await stack.enter_async_context(await subscriber(url, settings, DEFAULTED, {}))
        assert state_of(await next_raw(first)) == {"id": JOB, "running": False}
        late = await stack.enter_async_context(await subscriber(url, settings, DEFAULTED, {}))
        assert state_of(await next_raw(late)) == {"id": JOB, "running": False}
        assert len(app.state.fanout.streams) == 1


async def test_every_event_reads_the_jobs_logs_afresh_on_both_protocols(settings: Settings) -> None:
    async with served(settings) as (app, url), AsyncExitStack() as stack:
        rt: Runtime = app.state.runtime
        await asyncio.wait_for(app.state.hub.connected.wait(), 5)
        await make_job(id="quick", payload={"seconds": 0.05, "summary": "done"})
        sockets = [
            await stack.enter_async_context(await subscriber(url, settings, WITH_LOGS, {"id": "quick"}, protocol))
            for protocol in ("graphql-transport-ws", "graphql-transport-ws", "graphql-ws")
        ]
        for ws in sockets:
            assert state_of(await next_raw(ws))["logs"] == {"total": 0, "logs": []}
        assert len(app.state.fanout.streams) == 1  # both transport-ws sockets share; graphql-ws does not

        run_ids: list[int] = []
        for runs in (1, 2):
            await runs_service.trigger(rt, job_id="quick", actor="test")
            for ws in sockets:
                state = state_of(await next_raw(ws))
                while state["running"] or state["logs"]["total"] < runs:  # bounded: next_raw times out
                    state = state_of(await next_raw(ws))
                assert state["logs"]["total"] == runs
                ids = [int(entry["id"]) for entry in state["logs"]["logs"]]
                assert len(ids) == runs and ids == sorted(ids, reverse=True)
                run_ids.append(ids[0])
        assert len(set(run_ids[:3])) == 1 and len(set(run_ids[3:])) == 1  # every socket: the same newest run
        assert run_ids[3] > run_ids[0]  # the second run's event carries the second run


async def test_a_shared_stream_does_not_run_in_its_first_subscribers_log_context() -> None:
    seen: list[dict[str, Any]] = []

    async def results() -> AsyncIterator[ExecutionResult]:
        seen.append(structlog.contextvars.get_contextvars())
        yield ExecutionResult(data={"jobStatus": {"id": JOB}}, errors=None)

    async def open_stream() -> AsyncIterator[ExecutionResult]:
        return results()

    async def send(frame: str) -> None:
        pass

    fanout = Fanout()
    key = share_key(STATUS, {"id": JOB}, None)
    assert key is not None
    member = standalone("1", send)
    structlog.contextvars.bind_contextvars(request_id="first-subscriber", user="alice")
    try:
        fanout.join(key, member, open_stream, lambda: JOB)
    finally:
        structlog.contextvars.clear_contextvars()
    assert await asyncio.wait_for(member.ended, 5) is None
    assert seen == [{}]
    await fanout.aclose()


async def test_shutdown_ends_every_fanout_task_before_the_hub_stops(settings: Settings) -> None:
    pending_at_hub_stop: list[asyncio.Task[Any]] = []
    async with AsyncExitStack() as stack:
        async with served(settings) as (app, url):
            fanout: Fanout = app.state.fanout
            hub = app.state.hub
            await asyncio.wait_for(hub.connected.wait(), 5)
            stop = hub.stop

            async def stop_after_check() -> None:  # records what is still running when the hub goes
                pending_at_hub_stop.extend(t for t in asyncio.all_tasks() if t.get_name().startswith("fanout-"))
                await stop()

            hub.stop = stop_after_check
            for query, variables in ((STATUS, {"id": JOB}), (STATUS, {"id": JOB}), (OTHER, {}), (STATUS, {})):
                ws = await stack.enter_async_context(await subscriber(url, settings, query, variables))
                if variables != {} or query == OTHER:
                    await next_raw(ws)  # the current state: the stream is live
            async with asyncio.timeout(5):  # the every-job stream sends nothing until a change
                while len(fanout.streams) < 3:  # noqa: ASYNC110 - nothing to wait on
                    await asyncio.sleep(0.01)

            # Streams whose generator takes a while to close (as one releasing a Redis subscription
            # would): one whose last member has just left, one still live when the server stops.
            async def slow_to_close() -> AsyncIterator[ExecutionResult]:
                try:
                    yield ExecutionResult(data={"jobStatus": None}, errors=None)
                    await asyncio.Event().wait()
                finally:
                    await asyncio.sleep(1.0)  # cut short by a second cancel

            async def open_slow() -> AsyncIterator[ExecutionResult]:
                return slow_to_close()

            async def send(frame: str) -> None:
                pass

            left: list[asyncio.Task[None]] = []
            for job in ("left", "live"):
                key = share_key(STATUS, {"id": job}, None)
                assert key is not None
                member = standalone("1", send)
                slow = fanout.join(key, member, open_slow, lambda: None)
                await asyncio.sleep(0.05)
                if job == "left":
                    slow.leave(member)
                    left.append(slow.task)
            tasks = [s.task for s in fanout.streams.values()] + left
            assert len(tasks) == 5
        # The server has shut down with the sockets still open on the client side.
    assert pending_at_hub_stop == []
    assert all(t.done() for t in tasks)
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("fanout-")]


async def test_a_stalled_socket_keeps_the_last_frames_per_job_and_never_delays_the_others() -> None:
    gate = asyncio.Event()  # a paused transport: sends wait until it drains
    slow_sent: list[str] = []
    fast_sent: list[str] = []

    async def slow_send(frame: str) -> None:
        await gate.wait()
        slow_sent.append(frame)

    async def fast_send(frame: str) -> None:
        fast_sent.append(frame)

    slow = standalone("1", slow_send)
    fast = standalone("1", fast_send)
    a_frames = [f"a{i}" for i in range(1, PER_JOB + 4)]
    offers = [("a", a_frames[0]), ("a", a_frames[1]), ("b", "b1"), *[("a", f) for f in a_frames[2:]]]
    for job, frame in offers:
        slow.offer(job, PreparedFrame.of(frame))
        fast.offer(job, PreparedFrame.of(frame))
    assert fast_sent == [frame for _, frame in offers]  # written at once, with no await in between
    assert slow_sent == [] and slow.writer is not None
    gate.set()
    await asyncio.wait_for(slow.flushed(), 5)
    # The one in flight, then each job's last PER_JOB frames in order (the oldest unsent ones went).
    assert slow_sent == [a_frames[0], *a_frames[-PER_JOB:], "b1"]


async def test_members_with_an_expired_token_or_a_completed_operation_get_nothing() -> None:
    fanout = Fanout()
    key = share_key(STATUS, {"id": JOB}, None)
    assert key is not None
    got: dict[str, list[str]] = {"live": [], "expired": [], "completed": []}
    release = asyncio.Event()

    async def results() -> AsyncIterator[ExecutionResult]:
        yield ExecutionResult(data={"jobStatus": {"id": JOB}}, errors=None)
        await release.wait()

    async def open_stream() -> AsyncIterator[ExecutionResult]:
        return results()

    def member(name: str, expires_at: float, current: bool) -> Member:
        async def send(frame: str) -> None:
            got[name].append(frame)

        return standalone("7", send, expires_at=expires_at, current=current)

    members = [member("live", float("inf"), True), member("expired", 0.0, True), member("completed", 1e12, False)]
    stream = None
    for m in members:
        stream = fanout.join(key, m, open_stream, lambda: JOB)
    assert stream is not None
    await asyncio.sleep(0.05)
    assert [json.loads(f) for f in got["live"]] == [
        {"id": "7", "type": "next", "payload": {"data": {"jobStatus": {"id": JOB}}}}
    ]
    assert got["expired"] == [] and got["completed"] == []
    release.set()
    assert [await asyncio.wait_for(m.ended, 5) for m in members] == [None, None, None]  # complete
    assert fanout.streams == {}


@pytest.mark.parametrize("compression", [None, "deflate"])
async def test_shared_frames_go_straight_to_the_server_and_none_reach_a_socket_it_closed(
    settings: Settings, compression: Literal["deflate"] | None
) -> None:
    """A shared stream writes with the server's own `send`, below the middlewares (app.api.graphql._frame_sender),
    or straight to its transport when the socket does not compress (app.adapters.uvicorn); a frame offered
    to a socket closed for a message over WS_MAX_MESSAGE_BYTES is refused quietly, and the others go on."""
    async with served(settings) as (app, url), AsyncExitStack() as stack:
        rt: Runtime = app.state.runtime
        fanout: Fanout = app.state.fanout
        await asyncio.wait_for(app.state.hub.connected.wait(), 5)
        closing = await subscriber(url, settings, STATUS, {"id": JOB}, compression=compression)
        staying = await stack.enter_async_context(
            await subscriber(url, settings, STATUS, {"id": JOB}, compression=compression)
        )
        assert state_of(await next_raw(closing)) == state_of(await next_raw(staying))
        (shared,) = fanout.streams.values()
        members = list(shared.members)
        assert [m.send.__qualname__ for m in members] == ["_frame_sender.<locals>.send_text"] * 2
        assert [m.write_wire is None for m in members] == [compression == "deflate"] * 2

        await closing.send(json.dumps({"type": "ping", "payload": {"pad": "x" * settings.ws_max_message_bytes}}))
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(closing.recv(), 5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
        async with asyncio.timeout(5):
            while len(shared.members) > 1:  # noqa: ASYNC110 - the operation ends with its socket
                await asyncio.sleep(0.01)
        gone = next(m for m in members if m not in shared.members)
        frame = PreparedFrame.of(next_frame(gone.operation_id, '{"data":null}'))
        if gone.write_wire is not None:
            assert gone.write_wire(frame.wire) is False  # declined: the ASGI send decides
        gone.offer(JOB, frame)  # the server refuses it: no error here
        assert gone.broken and gone.writer is None

        await set_running(rt, True)
        assert state_of(await next_raw(staying))["running"] is True
        await set_running(rt, False)
        assert state_of(await next_raw(staying))["running"] is False
