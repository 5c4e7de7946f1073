"""What app/adapters/strawberry.py relies on in strawberry-graphql 0.341.2 (and cross-web 0.9.0), pinned.

The source pins cover the strawberry code our handlers subclass or count on: how a subscribe registers an
operation and runs it (`handle_subscribe`, `run_operation`), how a completed operation leaves the socket's
`operations` (`cleanup_operation`, `Operation.send_operation_message`), how the legacy protocol refuses a
connection (`handle_connection_init`) and how the HTTP view raises for a request it cannot take (`run`). When one
fails: read the new source, bring the adapter in line, then update the digest here. The behaviours themselves
run below and in tests/graphql (the legacy refusal's 4403: test_subscriptions.py; a batch's 400: test_api.py).
"""

from __future__ import annotations

import asyncio
import inspect
import json

import pytest
from strawberry.http.async_base_view import AsyncBaseHTTPView
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler as TransportWS,
)
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import Operation
from strawberry.subscriptions.protocols.graphql_ws.handlers import BaseGraphQLWSHandler

from app.adapters import strawberry as adapter
from app.platform.config import Settings
from tests.adapters.pins import Sources, check_source, check_version
from tests.support.subscriptions import JOB, STATUS, next_raw, served, subscriber

VERSIONS = {"strawberry-graphql": "0.341.2", "cross-web": "0.9.0"}
SOURCES: Sources = {
    "BaseGraphQLTransportWSHandler.handle_subscribe": (
        TransportWS.handle_subscribe,
        "d69e5dbce9e38a16",
    ),
    "BaseGraphQLTransportWSHandler.run_operation": (TransportWS.run_operation, "e760cd71eb37905f"),
    "BaseGraphQLTransportWSHandler.cleanup_operation": (
        TransportWS.cleanup_operation,
        "fc0d6de7efc793ab",
    ),
    "Operation.send_operation_message": (Operation.send_operation_message, "dcb871d26abf720b"),
    "BaseGraphQLWSHandler.handle_connection_init": (BaseGraphQLWSHandler.handle_connection_init, "acf753f522e8f4a9"),
    "AsyncBaseHTTPView.run": (AsyncBaseHTTPView.run, "b278e647b7eee2e8"),
}


ADAPTER = "app/adapters/strawberry.py"


@pytest.mark.sqlite_only
@pytest.mark.parametrize("package", VERSIONS)
def test_the_versions_are_the_ones_the_adapter_was_written_for(package: str) -> None:
    check_version(package, VERSIONS[package], ADAPTER)


@pytest.mark.sqlite_only
@pytest.mark.parametrize("name", SOURCES)
def test_the_code_the_adapter_subclasses_or_counts_on_is_unchanged(name: str) -> None:
    check_source(name, SOURCES, ADAPTER)


@pytest.mark.sqlite_only
def test_the_router_picks_our_handlers_from_the_attributes_strawberry_reads() -> None:
    assert AsyncBaseHTTPView.graphql_ws_handler_class is not None  # the attributes exist on strawberry's view...
    assert adapter.Router.graphql_ws_handler_class is adapter.LegacyWSHandler  # ...and ours fill them
    assert adapter.Router.graphql_transport_ws_handler_class is adapter.TransportWSHandler
    # What SharedOperation reads of strawberry's objects.
    assert set(Operation.__slots__) >= {"id", "query", "variables", "operation_name"}
    handler_attributes = inspect.getsource(TransportWS.__init__)
    for name in ("self.view", "self.websocket", "self.context", "self.root_value", "self.schema", "self.operations"):
        assert name in handler_attributes, name


async def test_a_completed_shared_subscription_leaves_the_sockets_operations(settings: Settings) -> None:
    """The fan-out skips a member whose operation is no longer the one under its id in `operations`: strawberry
    drops it there when the client completes it."""
    async with served(settings) as (app, url):
        ws = await subscriber(url, settings, STATUS, {"id": JOB})
        try:
            assert json.loads(await next_raw(ws))["payload"]["data"]["jobStatus"]["id"] == JOB
            (stream,) = app.state.fanout.streams.values()
            (member,) = stream.members
            assert member.operations.get(member.operation_id) is member.operation
            await ws.send(json.dumps({"id": member.operation_id, "type": "complete"}))
            for _ in range(100):
                if member.operations.get(member.operation_id) is not member.operation:
                    break
                await asyncio.sleep(0.02)
            assert member.operation_id not in member.operations
        finally:
            await ws.close()
