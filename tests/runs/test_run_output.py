"""What a run said and did: its log lines (bounded, with the truncation mark), progress, output and traceback, read
over REST and GraphQL, through the real embedded arq worker."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest

from app.data.runs import Run, RunLogLine
from app.platform import metrics
from app.platform.config import Settings
from app.platform.timefmt import utcnow
from tests.conftest import make_token, running_app
from tests.factories import make_job, wait_for_logs

pytestmark = pytest.mark.postgres


async def run_once(
    client: httpx.AsyncClient, auth: dict[str, str], job_id: str, payload: dict[str, Any], timeout: float = 20.0
) -> dict[str, Any]:
    """Create a `test_chatty` job with this payload, trigger it, and return its run's detail once it ended."""
    await make_job(id=job_id, type="test_chatty", payload=payload)
    assert (await client.post(f"/api/jobs/{job_id}/trigger", headers=auth)).status_code == 200
    [entry] = await wait_for_logs(client, job_id, auth, timeout=timeout)
    response = await client.get(f"/api/runs/{entry['id']}", headers=auth)
    assert response.status_code == 200, response.text
    detail: dict[str, Any] = response.json()
    return detail


async def test_lines_progress_and_output_are_kept_with_the_run(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    output = {"summary": "five lines", "count": 5}
    run = await run_once(client, auth, "chatty", {"lines": 5, "output": output})
    # The log entry's fields first, as the logs list shows them, then what the run said.
    assert list(run)[:11] == [
        *["id", "jobId", "startedAt", "completedAt", "duration", "result", "triggeredBy", "details"],
        *["attempt", "fireAt", "payload"],
    ]
    assert list(run)[11:] == ["output", "progress", "errorType", "traceback"]
    assert (run["result"], run["details"], run["output"]) == ("success", "five lines", output)
    assert (run["errorType"], run["traceback"]) == (None, None)
    progress = run["progress"]
    assert (progress["done"], progress["total"], progress["note"]) == (5, 5, "line 5")
    page = (await client.get(f"/api/runs/{run['id']}/log", headers=auth)).json()
    assert (page["runId"], page["after"], page["more"], page["ended"]) == (run["id"], 5, False, True)
    assert [(line["seq"], line["level"], line["message"], line["fields"]) for line in page["lines"]] == [
        (i, "info", f"line {i} of 5", {"i": i}) for i in range(1, 6)
    ]
    middle = (await client.get(f"/api/runs/{run['id']}/log?after=2&limit=2", headers=auth)).json()
    assert ([line["seq"] for line in middle["lines"]], middle["after"], middle["more"]) == ([3, 4], 4, True)
    past_the_end = (await client.get(f"/api/runs/{run['id']}/log?after=5", headers=auth)).json()
    assert (past_the_end["lines"], past_the_end["after"], past_the_end["more"]) == ([], 5, False)


async def test_ten_thousand_lines_keep_the_first_thousand_and_say_what_was_dropped(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    run = await run_once(client, auth, "flood", {"lines": 10_000, "progress": False})
    rows = await RunLogLine.filter(run_id=run["id"]).order_by("seq")
    assert [r.seq for r in rows] == list(range(1, 1002))  # RUN_LOG_MAX_LINES lines, then the mark
    assert [r.message for r in rows[:1000]] == [f"line {i} of 10000" for i in range(1, 1001)]
    mark = rows[-1]
    dropped = range(1001, 10_001)
    dropped_bytes = sum(len(f"line {i} of 10000") + len(json.dumps({"i": i}, separators=(",", ":"))) for i in dropped)
    assert mark.level == "warning"
    assert mark.extra == {"droppedLines": 9000, "droppedBytes": dropped_bytes}
    assert mark.message.startswith("log truncated: 9000 more lines")
    assert run["details"] == "logged 10000 lines"  # the run itself is unaffected


async def test_the_byte_bound_holds_too(settings_factory: Callable[..., Settings]) -> None:
    settings = settings_factory(run_log_max_bytes=1024)
    auth = {"Authorization": f"Bearer {make_token(settings)}"}
    async with running_app(settings) as (_, client):
        run = await run_once(client, auth, "wordy", {"lines": 200, "progress": False})
        rows = await RunLogLine.filter(run_id=run["id"]).order_by("seq")
    sizes = [len(f"line {i} of 200") + len(json.dumps({"i": i}, separators=(",", ":"))) for i in range(1, 201)]
    kept = len(rows) - 1
    assert [r.message for r in rows[:kept]] == [f"line {i} of 200" for i in range(1, kept + 1)]
    # As many lines as fit in the bytes, not one more.
    assert sum(sizes[:kept]) <= 1024 < sum(sizes[: kept + 1])
    assert rows[-1].extra == {"droppedLines": 200 - kept, "droppedBytes": sum(sizes[kept:])}


async def test_a_failed_run_keeps_its_exception_type_and_the_handlers_traceback(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    run = await run_once(client, auth, "kaput", {"lines": 1, "fail": "kaput"})
    assert (run["result"], run["details"], run["errorType"]) == ("error", "kaput", "RuntimeError")
    trace: str = run["traceback"]
    assert trace.startswith("Traceback (most recent call last):")
    assert trace.rstrip().endswith("RuntimeError: kaput")
    # The handler's frames, innermost last...
    assert "in chatty_handler" in trace and "in _explode" in trace
    assert trace.index("in chatty_handler") < trace.index("in _explode")
    assert "tests/support/job_types.py" in trace
    # ...and none of the framework's that called it.
    for framework in ("app/engine/", "app/job_types/registry.py", "asyncio/"):
        assert framework not in trace, trace
    assert run["output"] is None
    # The log lines it wrote before failing are kept.
    page = (await client.get(f"/api/runs/{run['id']}/log", headers=auth)).json()
    assert [line["message"] for line in page["lines"]] == ["line 1 of 1"]


async def test_output_round_trips_as_json(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    output = {"games": [{"id": "g1", "title": "Ünïcödé ☃"}], "ratio": 0.25, "ok": True, "none": None, "n": 2**40}
    run = await run_once(client, auth, "rich", {"lines": 0, "output": output})
    assert run["output"] == output
    # Without a `summary`, the details are the object's JSON, as the spec's one line.
    assert json.loads(run["details"]) == output
    # GraphQL answers the same object.
    query = "query($id: ID!) { run(id: $id) { output details } }"
    body = (await client.post("/graphql", json={"query": query, "variables": {"id": run["id"]}}, headers=auth)).json()
    assert body["data"]["run"] == {"output": output, "details": run["details"]}


async def test_an_output_over_the_bound_fails_the_run_saying_so(settings_factory: Callable[..., Settings]) -> None:
    settings = settings_factory(run_output_max_bytes=1024)
    auth = {"Authorization": f"Bearer {make_token(settings)}"}
    async with running_app(settings) as (_, client):
        run = await run_once(client, auth, "bulky", {"lines": 0, "output": {"blob": "x" * 2000}})
    assert run["result"] == "error"
    size = len('{"blob":""}') + 2000
    assert run["details"] == f"the handler's output is {size} bytes, over RUN_OUTPUT_MAX_BYTES (1024)"
    assert (run["errorType"], run["output"]) == ("OutputRefused", None)


async def test_a_run_that_says_nothing_writes_nothing_more(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    writes = metrics.RUN_LOG_WRITES._value.get()
    run = await run_once(client, auth, "quiet", {"lines": 0})
    assert run["details"] == "logged 0 lines"
    assert metrics.RUN_LOG_WRITES._value.get() == writes
    assert not await RunLogLine.filter(run_id=run["id"]).exists()
    assert run["progress"] is None
    # The control: a run that logs one line writes once more.
    await run_once(client, auth, "talkative", {"lines": 1, "progress": False})
    assert metrics.RUN_LOG_WRITES._value.get() == writes + 1


async def test_bad_run_ids_and_bounds_are_400s_and_unknown_runs_404s(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    run = await run_once(client, auth, "ids", {"lines": 1})
    cases = {
        "/api/runs/abc": (400, "invalid_run_id"),
        "/api/runs/0": (400, "invalid_run_id"),
        "/api/runs/99999999999999999999": (400, "invalid_run_id"),
        "/api/runs/987654": (404, "run_not_found"),
        "/api/runs/987654/log": (404, "run_not_found"),
        f"/api/runs/{run['id']}/log?after=-1": (400, "invalid_after"),
        f"/api/runs/{run['id']}/log?after=x": (400, "invalid_after"),
        f"/api/runs/{run['id']}/log?limit=0": (400, "invalid_limit"),
        f"/api/runs/{run['id']}/log?limit=1001": (400, "invalid_limit"),
    }
    for path, (status, code) in cases.items():
        response = await client.get(path, headers=auth)
        assert (response.status_code, response.json()["error"]) == (status, code), path
        assert response.json()["success"] is False


async def test_reading_a_run_needs_jobs_read(
    client: httpx.AsyncClient, auth: dict[str, str], settings: Settings
) -> None:
    run = await run_once(client, auth, "secret", {"lines": 1})
    trigger_only = {"Authorization": f"Bearer {make_token(settings, permissions=['jobs.trigger'])}"}
    reader = {"Authorization": f"Bearer {make_token(settings, permissions=['jobs.read'])}"}
    for path in (f"/api/runs/{run['id']}", f"/api/runs/{run['id']}/log"):
        refused = await client.get(path, headers=trigger_only)
        assert (refused.status_code, refused.json()["error"]) == (403, "forbidden")
        assert (await client.get(path, headers=reader)).status_code == 200
        assert (await client.get(path)).status_code == 401


async def test_graphql_run_with_its_log(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    run = await run_once(client, auth, "gql", {"lines": 4, "output": {"summary": "four"}})
    query = """query($id: ID!) {
      run(id: $id) {
        id result details output errorType traceback progress { done total note }
        log(after: 1, limit: 2) {
          __typename ... on RunLogPage { runId after more ended lines { seq level message fields } }
        }
        bad: log(limit: 0) { __typename ... on ValidationFailed { code } }
      }
      missing: run(id: "987654") { id }
      malformed: run(id: "abc") { id }
    }"""
    body = (await client.post("/graphql", json={"query": query, "variables": {"id": run["id"]}}, headers=auth)).json()
    assert "errors" not in body, body
    got = body["data"]
    assert got["missing"] is None and got["malformed"] is None
    assert got["run"]["progress"] == {"done": 4, "total": 4, "note": "line 4"}
    assert (got["run"]["details"], got["run"]["output"], got["run"]["errorType"]) == ("four", {"summary": "four"}, None)
    assert got["run"]["log"] == {
        "__typename": "RunLogPage",
        "runId": run["id"],
        "after": 3,
        "more": True,
        "ended": True,
        "lines": [{"seq": s, "level": "info", "message": f"line {s} of 4", "fields": {"i": s}} for s in (2, 3)],
    }
    assert got["run"]["bad"] == {"__typename": "ValidationFailed", "code": "invalid_limit"}


async def test_pruning_a_run_takes_its_lines(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    old = await run_once(client, auth, "old", {"lines": 3})
    young = await run_once(client, auth, "young", {"lines": 2})
    await Run.filter(id=old["id"]).update(completed_at=utcnow() - timedelta(days=400))
    await make_job(id="prune", type="cleanup_job_logs", payload={})
    assert (await client.post("/api/jobs/prune/trigger", headers=auth)).status_code == 200
    await wait_for_logs(client, "prune", auth)
    assert not await Run.filter(id=old["id"]).exists()
    assert not await RunLogLine.filter(run_id=old["id"]).exists()
    assert await RunLogLine.filter(run_id=young["id"]).count() == 2


async def test_lines_logged_from_a_thread_are_kept_in_order(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    await make_job(id="threads", type="test_thread_log", payload={"lines": 50})
    assert (await client.post("/api/jobs/threads/trigger", headers=auth)).status_code == 200
    [entry] = await wait_for_logs(client, "threads", auth)
    page = (await client.get(f"/api/runs/{entry['id']}/log", headers=auth)).json()
    assert [line["message"] for line in page["lines"]] == [f"from a thread {i}" for i in range(50)] + ["back"]


@pytest.mark.parametrize(("level", "expected"), [(None, ["careful"]), ("info", ["line 1 of 1", "careful"])])
async def test_lines_at_the_process_level_or_above_reach_the_process_log_too(
    settings_factory: Callable[..., Settings], caplog: pytest.LogCaptureFixture, level: str | None, expected: list[str]
) -> None:
    settings = settings_factory() if level is None else settings_factory(run_log_process_level=level)
    auth = {"Authorization": f"Bearer {make_token(settings)}"}
    caplog.set_level(logging.DEBUG, logger="jobs.noisy")
    async with running_app(settings) as (_, client):
        run = await run_once(client, auth, "noisy", {"lines": 1, "warning": "careful"})
        kept = await RunLogLine.filter(run_id=run["id"]).order_by("seq").values_list("level", "message", "extra")
    # The run keeps every line, whatever reaches the process log (WARNING and above by default).
    assert kept == [("info", "line 1 of 1", {"i": 1}), ("warning", "careful", {"attempt": 1})]
    assert [r.getMessage() for r in caplog.records if r.name == "jobs.noisy"] == expected
