"""The job types of the seed spec (listings, notifications, search index, HTTP requests) on real tables
and a real loopback HTTP server."""

from __future__ import annotations

import ipaddress
import json
import re
import socket
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from app.data.app_tables import Listing, Notification, SearchIndexEntry
from app.engine import RunLog
from app.job_types import registry
from app.job_types.registry import RunContext
from app.platform.runtime import Runtime
from app.platform.timefmt import utcnow
from workers.handlers import update_search_index
from workers.handlers.http_request import _internal, check_allowed

pytestmark = pytest.mark.postgres


# The run id these handlers' lines are written under: no real run has it.
HANDLER_TEST_RUN = 10**12


def context(rt: Runtime, payload: dict[str, Any] | None = None, type_name: str = "", **settings: object) -> RunContext:
    """What the runner builds: the payload validated by the type's model, settings with overrides."""
    model = registry.get(type_name).payload_model if type_name else registry.Payload
    return RunContext(
        job_id="x",
        run_id=1,
        payload=model.model_validate(payload or {}),
        settings=rt.settings.model_copy(update=settings),
        log=RunLog(rt, job_id="x", run_id=HANDLER_TEST_RUN),
    )


async def run(type_name: str, rt: Runtime, payload: dict[str, Any] | None = None, **settings: object) -> str:
    """The run's details: the handler's string, or its output's summary."""
    ctx = context(rt, payload, type_name, **settings)
    try:
        result = await registry.get(type_name).handler(ctx)
    finally:
        await ctx.log.close()  # as the runner does: its last lines are written while the database is there
    return result["summary"] if isinstance(result, dict) else result


def validate(type_name: str, payload: dict[str, Any]) -> Any:
    return registry.get(type_name).payload_model.model_validate(payload)


# --- cleanup_expired_listings ---------------------------------------------------------------------


async def make_listing(title: str, *, age: timedelta = timedelta(0), description: str = "", **kw: Any) -> Listing:
    at = utcnow() - age
    return await Listing.create(title=title, description=description, created_at=at, updated_at=at, **kw)


async def test_cleanup_expired_listings_deletes_listings_older_than_days_old(orm: Runtime) -> None:
    await make_listing("ancient", age=timedelta(days=400))
    await make_listing("old", age=timedelta(days=31))
    await make_listing("recent", age=timedelta(days=29), price=1200)
    await make_listing("new")
    assert await run("cleanup_expired_listings", orm) == "Deleted 2 listings older than 30 days"
    assert sorted(await Listing.all().values_list("title", flat=True)) == ["new", "recent"]
    assert await run("cleanup_expired_listings", orm, {"days_old": 7}) == "Deleted 1 listings older than 7 days"
    assert await Listing.all().values_list("title", flat=True) == ["new"]


@pytest.mark.parametrize("payload", [{"days_old": 0}, {"days_old": -3}, {"daysOld": 5}, {"days_old": "many"}])
def test_cleanup_expired_listings_payload_rejects(payload: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        validate("cleanup_expired_listings", payload)


# --- send_notifications ---------------------------------------------------------------------------

DELIVERED: list[tuple[str, int, str]] = []


async def recording_sender(template: str, notification: Notification) -> None:
    DELIVERED.append((template, notification.id, notification.recipient))


def sync_recording_sender(template: str, notification: Notification) -> None:
    DELIVERED.append((template, notification.id, notification.recipient))


async def failing_sender(template: str, notification: Notification) -> None:
    if "bad" in notification.recipient:
        raise ConnectionError(f"mailbox {notification.recipient} unavailable")
    DELIVERED.append((template, notification.id, notification.recipient))


def always_failing_sender(template: str, notification: Notification) -> None:
    raise RuntimeError("smtp down")


SENDERS = "tests.workers.test_seed_handlers:"


@pytest.fixture(autouse=True)
def _clear_delivered() -> Iterator[None]:
    DELIVERED.clear()
    yield
    DELIVERED.clear()


async def make_notifications(*recipients: str) -> list[Notification]:
    return [await Notification.create(recipient=r, subject=f"Hi {r}", body=f"Body for {r}") for r in recipients]


async def test_send_notifications_default_sender_appends_json_lines_to_the_log(orm: Runtime, tmp_path: Path) -> None:
    log = tmp_path / "deep" / "er" / "notifications.log"  # parent folders are created
    done = await Notification.create(recipient="done@x", subject="s", body="b", sent_at=utcnow() - timedelta(days=1))
    pending = await make_notifications("a@x", "b@x", "c@x")
    summary = await run("send_notifications", orm, {"template": "welcome"}, notifications_log=log)
    assert summary == "Sent 3 notifications with template 'welcome'"
    lines = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    assert lines == [
        {"template": "welcome", "recipient": n.recipient, "subject": n.subject, "body": n.body, "id": n.id}
        for n in pending
    ]
    for n in pending:
        await n.refresh_from_db()
        assert n.sent_at is not None and n.attempts == 0
    assert (await Notification.get(id=done.id)).sent_at == done.sent_at
    # Nothing pending: nothing sent, nothing appended.
    again = await run("send_notifications", orm, {"template": "welcome"}, notifications_log=log)
    assert again == "Sent 0 notifications with template 'welcome'"
    assert len(log.read_text(encoding="utf-8").splitlines()) == 3


async def test_send_notifications_sends_every_batch_in_one_run_oldest_first(orm: Runtime) -> None:
    pending = await make_notifications(*(f"user{i}@x" for i in range(7)))
    payload = {"template": "digest", "batchSize": 3}
    summary = await run("send_notifications", orm, payload, notification_sender=SENDERS + "recording_sender")
    assert summary == "Sent 7 notifications with template 'digest'"
    assert DELIVERED == [("digest", n.id, n.recipient) for n in pending]
    assert await Notification.filter(sent_at=None).count() == 0


async def test_send_notifications_with_a_sync_sender(orm: Runtime) -> None:
    pending = await make_notifications("a@x", "b@x")
    summary = await run(
        "send_notifications", orm, {"template": "t"}, notification_sender=SENDERS + "sync_recording_sender"
    )
    assert summary == "Sent 2 notifications with template 't'"
    assert DELIVERED == [("t", n.id, n.recipient) for n in pending]


async def test_a_failing_notification_does_not_block_the_others(orm: Runtime) -> None:
    a, bad1, b, bad2, c = await make_notifications("a@x", "bad1@x", "b@x", "bad2@x", "c@x")
    sender = SENDERS + "failing_sender"
    payload = {"template": "t", "batchSize": 2}
    summary = await run("send_notifications", orm, payload, notification_sender=sender)
    assert (
        summary == f"Sent 3 notifications with template 't', 2 failed (first: #{bad1.id}: mailbox bad1@x unavailable)"
    )
    assert [d[1] for d in DELIVERED] == [a.id, b.id, c.id]
    rows = {n.id: n for n in await Notification.all()}
    assert [rows[n.id].sent_at is not None for n in (a, bad1, b, bad2, c)] == [True, False, True, False, True]
    assert [rows[n.id].attempts for n in (a, bad1, b, bad2, c)] == [0, 1, 0, 1, 0]
    # The failed ones stay pending: the next run tries them again, and only them. All fail: an error.
    DELIVERED.clear()
    with pytest.raises(RuntimeError, match=rf"^All 2 notifications failed \(first: #{bad1.id}: mailbox bad1@x"):
        await run("send_notifications", orm, payload, notification_sender=sender)
    assert DELIVERED == []
    assert await Notification.filter(sent_at=None).order_by("id").values_list("id", "attempts") == [
        (bad1.id, 2),
        (bad2.id, 2),
    ]


async def test_send_notifications_all_failing_is_an_error(orm: Runtime) -> None:
    await make_notifications("a@x", "b@x")
    with pytest.raises(RuntimeError, match=r"All 2 notifications failed .*smtp down"):
        await run("send_notifications", orm, {"template": "t"}, notification_sender=SENDERS + "always_failing_sender")
    assert await Notification.filter(sent_at=None, attempts=1).count() == 2


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_colon_here", "must be 'module:function'"),
        ("tests.workers.nope_module:f", "cannot import"),
        (SENDERS + "missing_function", "has no 'missing_function'"),
        (SENDERS + "SENDERS", "is not callable"),
    ],
)
async def test_send_notifications_bad_sender_setting_fails_before_sending(
    orm: Runtime, spec: str, message: str
) -> None:
    await make_notifications("a@x")
    with pytest.raises(ValueError, match=message):
        await run("send_notifications", orm, {"template": "t"}, notification_sender=spec)
    assert await Notification.filter(sent_at=None, attempts=0).count() == 1


def test_send_notifications_payload_wire_names() -> None:
    assert validate("send_notifications", {"template": "x", "batchSize": 5}).batch_size == 5
    assert validate("send_notifications", {"template": "x", "batch_size": 7}).batch_size == 7
    assert validate("send_notifications", {"template": "x"}).batch_size == 100
    assert validate("send_notifications", {"template": "x", "batchSize": 10_000}).batch_size == 10_000


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"template": ""},
        {"template": "x", "batchSize": 0},
        {"template": "x", "batchSize": 10_001},
        {"template": "x", "batchsize": 5},
        {"template": "x", "extra": 1},
    ],
)
def test_send_notifications_payload_rejects(payload: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        validate("send_notifications", payload)


# --- update_search_index --------------------------------------------------------------------------


async def entries() -> dict[int, tuple[str, str]]:
    return {e.listing_id: (e.title, e.body) for e in await SearchIndexEntry.all()}


async def test_update_search_index_full_rebuilds_every_entry(orm: Runtime) -> None:
    a = await make_listing("Red  Bike", description="Barely\nused, 3 GEARS")
    b = await make_listing("Lamp")
    long_ago = utcnow() - timedelta(days=1)
    await SearchIndexEntry.create(listing_id=a.id, title="stale", body="stale", indexed_at=long_ago + timedelta(days=9))
    await SearchIndexEntry.create(listing_id=a.id + b.id + 1000, title="gone", body="gone", indexed_at=long_ago)
    summary = await run("update_search_index", orm, {"fullReindex": True})
    assert summary == "Indexed 2 listings (full), removed 1"
    assert await entries() == {a.id: ("Red  Bike", "red bike barely used, 3 gears"), b.id: ("Lamp", "lamp")}
    # Full means full: even entries that look current are rewritten.
    assert await run("update_search_index", orm, {"full_reindex": True}) == "Indexed 2 listings (full), removed 0"


async def test_update_search_index_incremental_reindexes_changed_and_new_removes_deleted(orm: Runtime) -> None:
    changed = await make_listing("Sofa", description="blue")
    deleted = await make_listing("Chair")
    same = await make_listing("Table")
    assert await run("update_search_index", orm) == "Indexed 3 listings (incremental), removed 0"
    before = {e.listing_id: e.indexed_at for e in await SearchIndexEntry.all()}

    changed.description = "green, like new"
    changed.updated_at = utcnow()
    await changed.save()
    await deleted.delete()
    new = await make_listing("Shelf")
    assert await run("update_search_index", orm) == "Indexed 2 listings (incremental), removed 1"
    assert await entries() == {
        changed.id: ("Sofa", "sofa green, like new"),
        same.id: ("Table", "table"),
        new.id: ("Shelf", "shelf"),
    }
    assert (await SearchIndexEntry.get(listing_id=same.id)).indexed_at == before[same.id]  # untouched
    assert await run("update_search_index", orm) == "Indexed 0 listings (incremental), removed 0"


async def test_update_search_index_walks_listings_in_chunks(orm: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(update_search_index, "CHUNK", 2)
    listings = [await make_listing(f"Item {i}") for i in range(5)]
    assert await run("update_search_index", orm) == "Indexed 5 listings (incremental), removed 0"
    assert sorted(await entries()) == [x.id for x in listings]
    listings[3].updated_at = utcnow()
    await listings[3].save()
    assert await run("update_search_index", orm) == "Indexed 1 listings (incremental), removed 0"


@pytest.mark.parametrize("payload", [{"fullReindex": "maybe"}, {"fullreindex": True}, {"full": True}])
def test_update_search_index_payload_rejects(payload: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        validate("update_search_index", payload)


def test_update_search_index_payload_wire_name() -> None:
    assert validate("update_search_index", {"fullReindex": True}).full_reindex is True
    assert validate("update_search_index", {}).full_reindex is False


# --- http_request ---------------------------------------------------------------------------------


class Server:
    """A loopback HTTP server: /ok, /status/<n>, /slow, /redirect. Records what it was asked."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self.release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                server.requests.append((self.command, self.path, dict(self.headers), body))
                if self.path == "/slow":
                    server.release.wait(10)
                if self.path == "/redirect":
                    self.send_response(302)
                    self.send_header("Location", f"{server.base}/ok")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                status = int(self.path.rsplit("/", 1)[1]) if self.path.startswith("/status/") else 200
                data = f"body of {self.path}  with\nnewlines ".encode() + b"x" * 1000
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server()
    thread = threading.Thread(target=srv.httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.release.set()
        srv.httpd.shutdown()
        srv.httpd.server_close()


async def test_http_request_success_sends_method_headers_and_body(orm: Runtime, server: Server) -> None:
    payload = {
        "url": f"{server.base}/ok?x=1",
        "method": "POST",
        "headers": {"X-Token": "abc", "Content-Type": "application/json"},
        "body": '{"ping": true}',
    }
    summary = await run("http_request", orm, payload, http_request_allowed_hosts=[server.base])
    assert re.fullmatch(rf"HTTP 200 from POST {server.base}/ok\?x=1 in \d+ ms", summary), summary
    [(method, path, headers, body)] = server.requests
    assert (method, path, body) == ("POST", "/ok?x=1", b'{"ping": true}')
    assert headers["X-Token"] == "abc" and headers["Content-Type"] == "application/json"


async def test_http_request_head_and_a_list_of_expected_statuses(orm: Runtime, server: Server) -> None:
    allowed = {"http_request_allowed_hosts": [server.base]}
    summary = await run("http_request", orm, {"url": f"{server.base}/ok", "method": "HEAD"}, **allowed)
    assert summary.startswith(f"HTTP 200 from HEAD {server.base}/ok in ")
    payload: dict[str, Any] = {"url": f"{server.base}/status/201", "method": "PUT", "expectStatus": [200, 201]}
    assert (await run("http_request", orm, payload, **allowed)).startswith(
        f"HTTP 201 from PUT {server.base}/status/201"
    )
    payload = {"url": f"{server.base}/status/404", "method": "DELETE", "expectStatus": 404}
    assert (await run("http_request", orm, payload, **allowed)).startswith("HTTP 404 from DELETE")


async def test_http_request_wrong_status_fails_with_the_start_of_the_body(orm: Runtime, server: Server) -> None:
    url = f"{server.base}/status/500"
    with pytest.raises(ValueError) as info:
        await run("http_request", orm, {"url": url}, http_request_allowed_hosts=[server.base])
    message = str(info.value)
    assert message.startswith(f"HTTP 500 from GET {url}, expected 200: body of /status/500 with newlines xxx")
    assert "\n" not in message and len(message) < len(url) + 250
    with pytest.raises(ValueError, match=r"^HTTP 500 from PATCH .*, expected 200 or 204: "):
        payload = {"url": url, "method": "PATCH", "expectStatus": [200, 204]}
        await run("http_request", orm, payload, http_request_allowed_hosts=[server.base])


async def test_http_request_times_out_clearly(orm: Runtime, server: Server) -> None:
    url = f"{server.base}/slow"
    with pytest.raises(TimeoutError, match=rf"^no answer from GET {re.escape(url)} within 0.3 s$"):
        await run("http_request", orm, {"url": url, "timeout": 0.3}, http_request_allowed_hosts=[server.base])


async def test_http_request_does_not_follow_redirects(orm: Runtime, server: Server) -> None:
    url = f"{server.base}/redirect"
    allowed = {"http_request_allowed_hosts": [server.base]}
    with pytest.raises(ValueError, match=rf"^HTTP 302 from GET {url}, expected 200 \(redirect to {server.base}/ok"):
        await run("http_request", orm, {"url": url}, **allowed)
    assert [r[1] for r in server.requests] == ["/redirect"]
    assert (await run("http_request", orm, {"url": url, "expectStatus": 302}, **allowed)).startswith("HTTP 302")
    assert [r[1] for r in server.requests] == ["/redirect", "/redirect"]


@pytest.mark.parametrize(
    ("allowed", "message"),
    [
        ([], "host 'http://127.0.0.1:{port}' is not in HTTP_REQUEST_ALLOWED_HOSTS, which is empty"),
        (
            ["example.com", "http://localhost:{port}"],
            "host 'http://127.0.0.1:{port}' is not in HTTP_REQUEST_ALLOWED_HOSTS",
        ),
        (["https://127.0.0.1:{port}"], "host 'http://127.0.0.1:{port}' is not in"),  # scheme mismatch
        (["http://127.0.0.1"], "host 'http://127.0.0.1:{port}' is not in"),  # port 80 implied
        (["http://127.0.0.1:1"], "host 'http://127.0.0.1:{port}' is not in"),
    ],
)
async def test_http_request_refuses_hosts_not_allowed(
    orm: Runtime, server: Server, allowed: list[str], message: str
) -> None:
    hosts = [a.format(port=server.port) for a in allowed]
    with pytest.raises(ValueError, match=re.escape(message.format(port=server.port))):
        await run("http_request", orm, {"url": f"{server.base}/ok"}, http_request_allowed_hosts=hosts)
    assert server.requests == []


@pytest.mark.parametrize(
    ("allowed", "refused"),
    [
        (["http://localhost:{port}"], "'localhost' resolves to 127.0.0.1, an internal address"),  # by name only
        (["http://localhost:{port}", "http://127.0.0.1:1"], "resolves to 127.0.0.1"),  # the address, another port
    ],
)
async def test_http_request_refuses_a_name_resolving_to_an_internal_address(
    orm: Runtime, server: Server, allowed: list[str], refused: str
) -> None:
    """A name the allow-list names is still refused when it resolves to loopback, private, link-local (cloud
    metadata) or other internal addresses that the allow-list does not name themselves."""
    hosts = [a.format(port=server.port) for a in allowed]
    with pytest.raises(ValueError, match=re.escape(refused)):
        await run("http_request", orm, {"url": f"http://localhost:{server.port}/ok"}, http_request_allowed_hosts=hosts)
    assert server.requests == []


async def test_http_request_connects_to_the_address_it_checked_with_the_name_as_host(
    orm: Runtime, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both the name and the address it resolves to are allowed: the connection goes to the address resolved at
    the check, with the name in Host; proxy variables of the environment are ignored."""
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # a proxy that would refuse the connection
    monkeypatch.setenv("ALL_PROXY", "http://127.0.0.1:9")
    hosts = [f"http://localhost:{server.port}", server.base]
    summary = await run(
        "http_request", orm, {"url": f"http://localhost:{server.port}/ok"}, http_request_allowed_hosts=hosts
    )
    assert summary.startswith(f"HTTP 200 from GET http://localhost:{server.port}/ok")
    [(_, path, headers, _)] = server.requests
    assert (path, headers["Host"]) == ("/ok", f"localhost:{server.port}")


async def test_http_request_never_resolves_the_name_again_after_its_check(
    orm: Runtime, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS rebinding: the name answers an allowed address once, then an address that is not allowed (unreachable
    here). The request goes to the address of the check: the name is resolved once."""
    real = socket.getaddrinfo
    lookups: list[str] = []

    def rebinding(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "rebind.test":
            lookups.append(host)
            address = "127.0.0.1" if len(lookups) == 1 else "10.255.255.1"
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    hosts = [f"http://rebind.test:{server.port}", server.base]
    url = f"http://rebind.test:{server.port}/ok"
    summary = await run("http_request", orm, {"url": url, "timeout": 5}, http_request_allowed_hosts=hosts)
    assert summary.startswith(f"HTTP 200 from GET {url}")
    assert lookups == ["rebind.test"]
    assert server.requests[0][2]["Host"] == f"rebind.test:{server.port}"


def test_internal_addresses_are_the_ones_refused() -> None:
    for address in (
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "::1",
        "fe80::1",
        "fd00::1",
        "0.0.0.0",
        "::ffff:127.0.0.1",
        "224.0.0.1",
        "100.64.0.1",
    ):
        assert _internal(ipaddress.ip_address(address)), address
    for address in ("8.8.8.8", "93.184.216.34", "2606:4700:4700::1111"):
        assert not _internal(ipaddress.ip_address(address)), address


async def test_http_request_connection_refused_is_a_clear_error(orm: Runtime) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    with pytest.raises(ValueError, match=rf"^GET {re.escape(url)} failed: "):
        await run(
            "http_request", orm, {"url": url, "timeout": 5}, http_request_allowed_hosts=[f"http://127.0.0.1:{port}"]
        )


async def test_http_request_summary_hides_credentials_in_the_url(orm: Runtime, server: Server) -> None:
    url = f"http://user:secret@127.0.0.1:{server.port}/ok"
    summary = await run("http_request", orm, {"url": url}, http_request_allowed_hosts=[server.base])
    assert "secret" not in summary and summary.startswith(f"HTTP 200 from GET {server.base}/ok in ")
    assert server.requests[0][2]["Authorization"].startswith("Basic ")


def test_http_request_payload_wire_names_and_defaults() -> None:
    p = validate("http_request", {"url": "https://api.example.com/x", "expectStatus": [200, 202]})
    assert (p.method, p.headers, p.body, p.timeout, p.expect_status) == ("GET", {}, None, 30, [200, 202])
    assert validate("http_request", {"url": "http://h", "expect_status": 204}).expect_status == 204
    assert validate("http_request", {"url": "http://h"}).expect_status == 200


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"url": "ftp://api.example.com/x"},
        {"url": "file:///etc/passwd"},
        {"url": "/relative/path"},
        {"url": "http:///no-host"},
        {"url": "http://h", "method": "get"},
        {"url": "http://h", "method": "CONNECT"},
        {"url": "http://h", "timeout": 0},
        {"url": "http://h", "timeout": 301},
        {"url": "http://h", "expectStatus": []},
        {"url": "http://h", "expectStatus": 99},
        {"url": "http://h", "expectStatus": [200, 600]},
        {"url": "http://h", "headers": {"Host": "internal.example"}},
        {"url": "http://h", "headers": {"X-N": 1}},
        {"url": "http://h", "followRedirects": True},
    ],
)
def test_http_request_payload_rejects(payload: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        validate("http_request", payload)


# --- check_allowed --------------------------------------------------------------------------------

CASES: list[tuple[str, list[str], bool]] = [
    # scheme://host[:port]: exactly that scheme, host and port
    ("https://api.example.com/v1/x?q=1", ["https://api.example.com"], True),
    ("https://api.example.com:443/x", ["https://api.example.com"], True),
    ("https://api.example.com/x", ["https://api.example.com:443"], True),
    ("https://api.example.com/x", ["https://api.example.com/"], True),
    ("https://api.example.com:8443/x", ["https://api.example.com"], False),
    ("http://api.example.com/x", ["https://api.example.com"], False),
    ("https://api.example.com/x", ["http://api.example.com"], False),
    ("http://127.0.0.1:8080/hook", ["http://127.0.0.1:8080"], True),
    ("http://127.0.0.1:8081/hook", ["http://127.0.0.1:8080"], False),
    ("http://127.0.0.1/hook", ["http://127.0.0.1:8080"], False),
    # a bare host: http on 80 or https on 443, not every port
    ("http://api.example.com:8080/", ["api.example.com"], False),
    ("https://api.example.com:8443/", ["api.example.com"], False),
    ("http://api.example.com/", ["api.example.com"], True),
    ("https://api.example.com/", ["api.example.com"], True),
    ("https://api.example.com:443/", ["api.example.com"], True),
    ("ftp://api.example.com/", ["api.example.com"], False),
    # case-insensitive, no wildcards, no subdomains, no suffix tricks
    ("https://API.Example.COM/x", ["https://api.example.com"], True),
    ("https://api.example.com/x", ["API.EXAMPLE.COM"], True),
    ("https://sub.api.example.com/", ["api.example.com"], False),
    ("https://api.example.com.evil.net/", ["api.example.com"], False),
    ("https://evilapi.example.com/", ["api.example.com"], False),
    ("https://a.example.com/", ["*.example.com"], False),
    ("https://api.example.com/", ["https://*.example.com"], False),
    # the host the request would really go to
    ("http://api.example.com\\@evil.net/", ["api.example.com"], False),
    ("http://api.example.com@evil.net/", ["api.example.com"], False),
    ("https://user:pw@api.example.com/", ["api.example.com"], True),
    ("http://api.example.com#@evil.net/", ["api.example.com"], True),
    # IPv6 and internationalised names
    ("http://[::1]/", ["[::1]"], True),
    ("http://[::1]/", ["::1"], True),
    ("http://[::1]:8080/", ["::1"], False),
    ("http://[::1]:8080/", ["http://[::1]:8080"], True),
    ("http://[::1]:8080/", ["http://[::1]:8081"], False),
    ("http://[0:0:0:0:0:0:0:1]:8080/", ["http://[::1]:8080"], True),
    ("https://bücher.de/", ["BÜCHER.de"], True),
    ("https://xn--bcher-kva.de/", ["https://bücher.de"], True),
    # several entries, empty ones ignored; an empty list allows nothing
    ("https://b.example/", ["a.example", " ", "https://b.example"], True),
    ("https://api.example.com/", [], False),
    ("https://api.example.com/", [""], False),
]


@pytest.mark.parametrize(("url", "allowed", "ok"), CASES)
def test_check_allowed(url: str, allowed: list[str], ok: bool) -> None:
    if ok:
        check_allowed(url, allowed)
    else:
        with pytest.raises(ValueError, match=r"is not in HTTP_REQUEST_ALLOWED_HOSTS|only http and https"):
            check_allowed(url, allowed)


def test_check_allowed_message_names_the_origin() -> None:
    with pytest.raises(ValueError) as info:
        check_allowed("https://Evil.example/x", ["https://good.example"])
    assert str(info.value) == "host 'https://evil.example:443' is not in HTTP_REQUEST_ALLOWED_HOSTS"
    with pytest.raises(ValueError, match=r"^host 'http://\[::1\]:80' is not in HTTP_REQUEST_ALLOWED_HOSTS, which is"):
        check_allowed("http://[::1]/", [])


@pytest.mark.parametrize(
    "entry",
    ["api.example.com:8080", "https://api.example.com/path", "ftp://api.example.com", "user@api.example.com", "a/b"],
)
def test_check_allowed_rejects_malformed_entries(entry: str) -> None:
    with pytest.raises(ValueError, match="is neither 'scheme://host\\[:port\\]' nor a bare host"):
        check_allowed("https://api.example.com/", [entry])


def test_check_allowed_rejects_urls_it_cannot_request() -> None:
    with pytest.raises(ValueError, match="only http and https"):
        check_allowed("gopher://api.example.com/", ["api.example.com"])
    with pytest.raises(ValueError, match="has no host"):
        check_allowed("http:///x", ["api.example.com"])
