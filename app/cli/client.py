"""`jobs-gateway jobs …`: drive a running API from a terminal, over its REST API and GraphQL subscription.

Only HTTP and websockets here: the commands work against any instance, local or remote, with a token.
"""

from __future__ import annotations

import asyncio
import json
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import ValidationError
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from app.api.auth import ADMIN_PERMISSION, issue_token
from app.platform.config import get_settings

DEFAULT_URL = "http://127.0.0.1:8000"
URL_ENV, TOKEN_ENV = "JOBS_GATEWAY_URL", "JOBS_GATEWAY_TOKEN"
CLI_SUB = "cli"
HTTP_TIMEOUT_SECONDS = 10.0
CLOSE_TIMEOUT_SECONDS = 1.0
FOLLOW_PAGE = 100
STATUS_QUERY = "subscription Follow($id: ID) { jobStatus(id: $id) { id running lastRun lastResult } }"
RUN_LOG_QUERY = (
    "subscription Tail($run: ID!, $after: Int) { runLog(runId: $run, after: $after) { at level message fields } }"
)
LOG_PAGE = 1000
# graphql-transport-ws closes a refused or expired connection with 4403.
FORBIDDEN_CLOSE = 4403


class CliError(Exception):
    """Printed as `jobs-gateway: <message>`; the command exits 1."""


def resolve_url(url: str | None) -> str:
    return (url or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")


def resolve_token(token_file: str | None) -> str:
    """The token in --token-file, else JOBS_GATEWAY_TOKEN, else one minted from the configured signing key (sub
    `cli`). Never from the command line, where every user of the machine reads it (`ps`)."""
    if token_file:
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip()
        except (OSError, ValueError) as exc:  # ValueError: not UTF-8
            raise CliError(f"cannot read the token file: {exc}") from exc
        if not token:
            raise CliError(f"the token file {token_file} is empty")
        return token
    if os.environ.get(TOKEN_ENV):
        return os.environ[TOKEN_ENV]
    how = f"pass --token-file or set {TOKEN_ENV}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the throwaway-secret warning: the error below says it better
        try:
            settings = get_settings()
        except (ValidationError, ValueError) as exc:
            raise CliError(f"no token: {how} (settings cannot sign one: {exc})") from exc
    if settings.throwaway_secret:  # a token signed with it would verify in no other process
        raise CliError(f"no token: {how}, or set JWT_SECRET to the API's secret")
    try:
        return issue_token(settings, sub=CLI_SUB, permissions=[ADMIN_PERMISSION], ttl=timedelta(hours=1))
    except ValueError as exc:
        raise CliError(f"no token: {how} ({exc})") from exc


@dataclass
class Api:
    url: str
    token: str
    _client: httpx.AsyncClient = field(init=False)

    def __post_init__(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"}
        self._client = httpx.AsyncClient(base_url=self.url, headers=headers, timeout=HTTP_TIMEOUT_SECONDS)

    async def close(self) -> None:
        await self._client.aclose()

    async def call(self, method: str, path: str, **params: Any) -> Any:
        try:
            response = await self._client.request(method, path, params=params or None)
        except httpx.HTTPError as exc:
            raise CliError(f"cannot reach {self.url}: {exc}") from exc
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.is_error:
            message = body.get("message") if isinstance(body, dict) else None
            raise CliError(f"{response.status_code} {message or response.reason_phrase}")
        return body

    def websocket_url(self) -> str:
        return self.url.replace("https://", "wss://", 1).replace("http://", "ws://", 1) + "/graphql"


def _cell(value: object) -> str:
    return "-" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def jobs_table(jobs: Iterable[dict[str, Any]]) -> str:
    rows = [["ID", "ENABLED", "RUNNING", "SCHEDULE", "NEXT RUN", "LAST RUN", "LAST RESULT"]]
    for job in jobs:
        keys = ("id", "enabled", "running", "schedule", "nextRun", "lastRun", "lastResult")
        rows.append([_cell(job[k]) for k in keys])
    return table(rows)


def run_line(run: dict[str, Any]) -> str:
    """One run, as `jobs logs` prints it: start, result, duration, who, details."""
    result = run["result"] or "running"
    duration = "-" if run["duration"] is None else f"{run['duration']}ms"
    return f"{run['startedAt']}  #{run['id']}  {result:<7}  {duration:>9}  {run['triggeredBy']}  {run['details'] or ''}"


async def list_jobs(api: Api, *, as_json: bool) -> str:
    jobs = await api.call("GET", "/api/jobs")
    return json.dumps(jobs, indent=2) if as_json else jobs_table(jobs)


async def trigger(api: Api, job_id: str) -> str:
    body = await api.call("POST", f"/api/jobs/{quote(job_id, safe='')}/trigger")
    return str(body["message"])


async def recent_runs(api: Api, job_id: str, limit: int) -> list[dict[str, Any]]:
    """The job's latest runs, oldest first."""
    page = await api.call("GET", f"/api/jobs/{quote(job_id, safe='')}/logs", limit=limit)
    return list(reversed(page["logs"]))


def log_line(line: dict[str, Any], run_id: int) -> str:
    """One log line of a run, as `jobs logs -f` and `runs show` print it."""
    fields = f"  {json.dumps(line['fields'], separators=(',', ':'))}" if line.get("fields") else ""
    return f"  #{run_id} {line['at']}  {line['level']:<7}  {line['message']}{fields}"


@dataclass
class Seen:
    """What `jobs logs` printed: each finished run once, and only runs newer than the listing, or the ones it
    showed still running (whose end is news)."""

    newest: int = 0
    listed: set[int] = field(default_factory=set)
    printed: set[int] = field(default_factory=set)  # finished runs printed
    tailed: set[int] = field(default_factory=set)  # runs whose lines are followed
    last_state: object = None  # the job's last `jobStatus` frame

    def listing(self, run: dict[str, Any]) -> None:
        self.newest = max(self.newest, run["id"])
        self.listed.add(run["id"])
        if run["completedAt"]:
            self.printed.add(run["id"])

    def is_news(self, run: dict[str, Any]) -> bool:
        return (
            bool(run["completedAt"])
            and run["id"] not in self.printed
            and (run["id"] > self.newest or run["id"] in self.listed or run["id"] in self.tailed)
        )


async def follow(api: Api, job_id: str, seen: Seen, emit: Any) -> None:
    """Print the lines of the job's running run as they are written, and each run as it finishes, until the job is
    deleted or the connection ends.

    The `jobStatus` subscription says when the job's state changes; the runs themselves come from the REST logs,
    so nothing is missed when several changes are coalesced into one message. A run in progress is tailed on
    the same socket with `runLog` from its first line."""
    try:
        # Ctrl-C closes the socket on the way out: wait a second at most for the server's side of the close.
        async with connect(
            api.websocket_url(), subprotocols=[Subprotocol("graphql-transport-ws")], close_timeout=CLOSE_TIMEOUT_SECONDS
        ) as ws:
            await _subscribe(ws, api.token, STATUS_QUERY, {"id": job_id})
            while await _on_message(api, ws, job_id, seen, emit, json.loads(await ws.recv())):
                pass
    except ConnectionClosed as exc:
        code = exc.rcvd.code if exc.rcvd is not None else None
        if code == FORBIDDEN_CLOSE:
            raise CliError("the API closed the subscription: token refused or expired") from exc
        raise CliError(f"the API closed the subscription (code {code}); it may be restarting") from exc
    except OSError as exc:
        raise CliError(f"cannot reach {api.websocket_url()}: {exc}") from exc


async def _on_message(
    api: Api, ws: ClientConnection, job_id: str, seen: Seen, emit: Any, message: dict[str, Any]
) -> bool:
    """Act on one message of the socket; False once the job's subscription has ended (the job was deleted)."""
    operation = str(message.get("id", ""))
    if message["type"] == "error" or message.get("payload", {}).get("errors"):
        raise CliError(f"subscription refused: {message.get('payload')}")
    if operation.startswith("run-"):
        if message["type"] == "next":
            emit(log_line(message["payload"]["data"]["runLog"], int(operation[4:])))
        return True
    if message["type"] == "complete":
        return False
    if message["type"] == "next":
        # A frame that says nothing new of the runs (a progress report) needs no fetch of the logs.
        state = message["payload"]["data"]["jobStatus"]
        if state != seen.last_state:
            seen.last_state = state
            await _runs_changed(api, ws, job_id, seen, emit)
    return True


async def _runs_changed(api: Api, ws: ClientConnection, job_id: str, seen: Seen, emit: Any) -> None:
    for run in await recent_runs(api, job_id, FOLLOW_PAGE):
        if run["completedAt"] is None and run["id"] not in seen.tailed:
            seen.tailed.add(run["id"])
            if run["id"] not in seen.listed:  # the listing printed it already
                emit(run_line(run))
            payload = {"query": RUN_LOG_QUERY, "variables": {"run": run["id"], "after": 0}}
            await ws.send(json.dumps({"id": f"run-{run['id']}", "type": "subscribe", "payload": payload}))
        elif seen.is_news(run):
            seen.printed.add(run["id"])
            emit(run_line(run))


async def show_run(api: Api, run_id: str, *, as_json: bool) -> str:
    """One run: its log entry, what it said (output, progress, traceback) and every log line it kept."""
    path = f"/api/runs/{quote(run_id, safe='')}"
    run = await api.call("GET", path)
    lines: list[dict[str, Any]] = []
    after = 0
    while True:
        page = await api.call("GET", f"{path}/log", after=after, limit=LOG_PAGE)
        lines += page["lines"]
        after = page["after"]
        if not page["more"]:
            break
    if as_json:
        return json.dumps({**run, "log": lines}, indent=2)
    out = [run_line(run), f"  payload:  {json.dumps(run['payload'])}"]
    if run["progress"] is not None:
        p = run["progress"]
        total = "?" if p["total"] is None else f"{p['total']:g}"
        out.append(f"  progress: {p['done']:g} of {total}{'  ' + p['note'] if p['note'] else ''}  (at {p['at']})")
    if run["output"] is not None:
        out.append("  output:   " + json.dumps(run["output"], indent=2).replace("\n", "\n            "))
    if run["errorType"] is not None:
        out.append(f"  error:    {run['errorType']}")
    if run["traceback"]:
        out.append("  " + run["traceback"].rstrip().replace("\n", "\n  "))
    out.append(f"  log:      {len(lines)} lines" if lines else "  log:      no lines")
    out += [log_line(line, run["id"]) for line in lines]
    return "\n".join(out)


async def _subscribe(ws: ClientConnection, token: str, query: str, variables: dict[str, Any]) -> None:
    await ws.send(json.dumps({"type": "connection_init", "payload": {"token": token}}))
    ack = json.loads(await asyncio.wait_for(ws.recv(), HTTP_TIMEOUT_SECONDS))
    if ack.get("type") != "connection_ack":
        raise CliError(f"subscription refused: {ack}")
    payload = {"query": query, "variables": variables}
    await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": payload}))
