"""`jobs-gateway` as an operator runs it: a real process against a real API process."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import tempfile
import time
from asyncio.subprocess import Process
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import jwt
import pytest
from websockets.asyncio.client import connect
from websockets.typing import Subprotocol

from app.platform.config import Settings
from app.platform.runtime import Runtime
from tests.conftest import SECRET, make_token
from tests.factories import make_job
from tests.support.processes import BIN, ApiProcess, WorkerProcess, env_for
from tests.support.servers import RedisServer, free_port

pytestmark = pytest.mark.slow
CLI = str(BIN / "jobs-gateway")


@pytest.fixture
def api(settings: Settings, orm: Runtime, tmp_path: Path) -> Iterator[ApiProcess]:
    with ApiProcess(settings, tmp_path, free_port()) as process:
        yield process


def cli(
    settings: Settings, *args: str, token: str | None = None, timeout: float = 30, **env: str
) -> subprocess.CompletedProcess[str]:
    environment = env_for(settings, **env)
    if token is not None:
        environment["JOBS_GATEWAY_TOKEN"] = token
    return subprocess.run(
        [CLI, *args], env=environment, capture_output=True, text=True, timeout=timeout, cwd=tempfile.gettempdir()
    )


def test_token_prints_a_token_the_api_accepts(settings: Settings) -> None:
    done = cli(settings, "token", "--sub", "7", "--ttl", "10m")
    assert done.returncode == 0, done.stderr
    claims = jwt.decode(done.stdout.strip(), SECRET, algorithms=["HS256"])
    assert (claims["sub"], claims["permissions"]) == ("7", ["settings.update"])
    assert 590 <= claims["exp"] - claims["iat"] <= 600


async def test_jobs_list_shows_every_job_with_its_status(api: ApiProcess, settings: Settings) -> None:
    await make_job(id="listed", schedule="0 0 1 1 *")
    done = cli(settings, "jobs", "list", "--url", api.url, token=make_token(settings))
    assert done.returncode == 0, done.stderr
    header, *rows = done.stdout.splitlines()
    assert header.split() == ["ID", "ENABLED", "RUNNING", "SCHEDULE", "NEXT", "RUN", "LAST", "RUN", "LAST", "RESULT"]
    listed = {row.split()[0]: row.split() for row in rows}
    assert {"metadata-sync", "cleanup-expired-tokens", "listed"} <= listed.keys()
    assert listed["listed"][1:3] == ["true", "false"]
    as_json = cli(settings, "jobs", "list", "--json", "--url", api.url, token=make_token(settings))
    assert "listed" in {job["id"] for job in json.loads(as_json.stdout)}


async def test_jobs_trigger_runs_the_job_and_logs_shows_the_run(api: ApiProcess, settings: Settings) -> None:
    await make_job(id="by-cli", schedule="0 0 1 1 *", payload={"seconds": 0.3, "summary": "from the terminal"})
    token = make_token(settings, sub="9")
    done = cli(settings, "jobs", "trigger", "by-cli", "--url", api.url, token=token)
    assert (done.returncode, done.stdout.strip()) == (0, "Job triggered successfully")
    deadline = time.monotonic() + 20
    while "success" not in (logs := cli(settings, "jobs", "logs", "by-cli", "--url", api.url, token=token)).stdout:
        assert time.monotonic() < deadline, logs.stdout + logs.stderr
        await asyncio.sleep(0.3)
    [line] = logs.stdout.splitlines()
    assert "success" in line and "user:9" in line and line.endswith("from the terminal")


async def test_jobs_trigger_of_a_running_job_exits_1_with_the_conflict(api: ApiProcess, settings: Settings) -> None:
    await make_job(id="stuck", type="test_block", schedule="0 0 1 1 *")  # runs until the API stops
    token = make_token(settings)
    assert cli(settings, "jobs", "trigger", "stuck", "--url", api.url, token=token).returncode == 0
    again = cli(settings, "jobs", "trigger", "stuck", "--url", api.url, token=token)
    assert (again.returncode, again.stderr.strip()) == (1, "jobs-gateway: 409 Job is already running")


async def test_the_token_comes_from_a_file_or_the_environment_never_the_command_line(
    api: ApiProcess, settings: Settings, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(make_token(settings) + "\n")
    listed = cli(settings, "jobs", "list", "--url", api.url, "--token-file", str(token_file))
    assert listed.returncode == 0 and "metadata-sync" in listed.stdout, listed.stderr
    token = make_token(settings)
    on_the_line = cli(settings, "jobs", "list", "--url", api.url, "--token", token)
    assert on_the_line.returncode == 2 and "unrecognized arguments: --token" in on_the_line.stderr
    assert token not in on_the_line.stderr  # not taken for a --token-file path either, whose error would print it
    missing = cli(settings, "jobs", "list", "--url", api.url, "--token-file", str(tmp_path / "nope"))
    assert missing.returncode == 1 and "cannot read the token file" in missing.stderr


def test_make_writes_the_development_env_for_its_owner_only(tmp_path: Path) -> None:
    made = subprocess.run(
        ["make", "--no-print-directory", "-f", str(BIN.parents[1] / "Makefile"), ".env"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    env = tmp_path / ".env"
    assert env.stat().st_mode & 0o777 == 0o600
    assert "JWT_SECRET=" in env.read_text()


async def test_errors_exit_1_with_the_apis_message(api: ApiProcess, settings: Settings) -> None:
    missing = cli(settings, "jobs", "trigger", "no-such-job", "--url", api.url, token=make_token(settings))
    assert (missing.returncode, missing.stderr.strip()) == (1, "jobs-gateway: 404 Job 'no-such-job' not found")
    refused = cli(settings, "jobs", "list", "--url", api.url, token="not-a-jwt")
    assert refused.returncode == 1 and refused.stderr.startswith("jobs-gateway: 401 Invalid token")
    unreachable = cli(settings, "jobs", "list", "--url", f"http://127.0.0.1:{free_port()}", token="x")
    assert unreachable.returncode == 1 and "cannot reach" in unreachable.stderr


async def test_a_job_id_with_url_characters_reaches_the_api_as_one_path_segment(
    api: ApiProcess, settings: Settings
) -> None:
    # Unescaped, `?` would start a query string (POST /api/jobs/odd: 405) and `#` a fragment.
    token = make_token(settings)
    for command in ("trigger", "logs"):
        for job_id in ("odd?id", "odd#id", "odd id"):
            done = cli(settings, "jobs", command, job_id, "--url", api.url, token=token)
            assert (done.returncode, done.stderr.split(" Invalid job ID")[0]) == (1, "jobs-gateway: 400"), (
                command,
                job_id,
                done.stderr,
            )


async def test_without_a_token_one_is_signed_with_the_configured_secret(api: ApiProcess, settings: Settings) -> None:
    done = cli(settings, "jobs", "trigger", "metadata-sync", "--url", api.url)  # JWT_SECRET comes from env_for
    assert done.returncode == 0, done.stderr
    without_secret = cli(settings.model_copy(update={"jwt_secret": None}), "jobs", "list", "--url", api.url)
    assert without_secret.returncode == 1 and "no token" in without_secret.stderr


def _sigint_as_from_a_terminal() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


async def follower_of(api: ApiProcess, settings: Settings, token: str, *args: str) -> asyncio.subprocess.Process:
    environment = env_for(settings)
    environment["JOBS_GATEWAY_TOKEN"] = token
    follower = await asyncio.create_subprocess_exec(
        CLI,
        "jobs",
        "logs",
        *args,
        "--follow",
        "--url",
        api.url,
        env=environment,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        # As from a terminal: a suite started in the background of a script (CI, tests/support/run_suite.sh)
        # passes SIGINT down ignored, and Python then installs no Ctrl-C handler at all.
        preexec_fn=_sigint_as_from_a_terminal,
    )
    assert follower.stderr is not None
    assert b"following " in await asyncio.wait_for(follower.stderr.readline(), 20)
    await asyncio.sleep(0.3)  # the subscription is set up just after the banner
    return follower


@asynccontextmanager
async def following(api: ApiProcess, settings: Settings, token: str, *args: str) -> AsyncIterator[Process]:
    """`jobs logs … --follow`, stopped with Ctrl-C at the end of the block (exit 130), killed if it is still there."""
    follower = await follower_of(api, settings, token, *args)
    try:
        yield follower
        await stop(follower)
    finally:
        if follower.returncode is None:
            follower.kill()
            await follower.wait()


async def read_until(follower: asyncio.subprocess.Process, ending: str) -> list[str]:
    """The follower's lines up to and including the first one that ends with `ending`."""
    assert follower.stdout is not None
    lines: list[str] = []
    while not (lines and lines[-1].endswith(ending)):
        lines.append((await asyncio.wait_for(follower.stdout.readline(), 20)).decode().rstrip("\n"))
    return lines


async def stop(follower: asyncio.subprocess.Process) -> None:
    if follower.returncode is None:
        follower.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(follower.wait(), 10) == 130


async def test_logs_follow_prints_the_running_runs_lines_then_the_run_as_it_finishes(
    api: ApiProcess, settings: Settings
) -> None:
    await make_job(id="followed", type="test_chatty", schedule="0 0 1 1 *", payload={"lines": 3, "pause": 0.2})
    token = make_token(settings)
    async with following(api, settings, token, "followed") as follower:
        for n in range(2):
            done = await asyncio.to_thread(cli, settings, "jobs", "trigger", "followed", "--url", api.url, token=token)
            assert done.returncode == 0, done.stderr
            lines = await read_until(follower, "logged 3 lines")
            running, *logged, finished = lines
            assert "running" in running, (n, lines)
            run_id = running.split("#")[1].split()[0]
            assert [line.split("info")[1].strip() for line in logged] == [
                f'line {i} of 3  {{"i":{i}}}' for i in range(1, 4)
            ], lines
            assert all(line.startswith(f"  #{run_id} ") for line in logged)
            assert f"#{run_id}" in finished and "success" in finished, lines


async def test_logs_follow_started_mid_run_tails_that_run_and_prints_its_end_once(
    api: ApiProcess, settings: Settings
) -> None:
    await make_job(id="midway", type="test_chatty", schedule="0 0 1 1 *", payload={"lines": 8, "pause": 0.25})
    token = make_token(settings)
    assert cli(settings, "jobs", "trigger", "midway", "--url", api.url, token=token).returncode == 0
    async with api.client(headers={"Authorization": f"Bearer {token}"}) as client:

        async def lines_written() -> int:
            logs = (await client.get("/api/jobs/midway/logs")).json()["logs"]
            return len((await client.get(f"/api/runs/{logs[0]['id']}/log")).json()["lines"]) if logs else 0

        deadline = time.monotonic() + 20
        while await lines_written() < 2:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
    async with following(api, settings, token, "midway") as follower:
        lines = await read_until(follower, "logged 8 lines")
        listed, *logged, finished = lines
        assert "running" in listed, lines  # the listing shows it running, once
        run_id = listed.split("#")[1].split()[0]
        # Every line from the first, those written before the follower came included, each once.
        assert [line.split("info")[1].strip().split("  ")[0] for line in logged] == [
            f"line {i} of 8" for i in range(1, 9)
        ], lines
        assert f"#{run_id}" in finished and "success" in finished, lines


async def test_logs_follow_with_a_limit_prints_only_runs_newer_than_those_listed(
    api: ApiProcess, settings: Settings
) -> None:
    await make_job(id="older", schedule="0 0 1 1 *", payload={"seconds": 0, "summary": "tick"})
    token = make_token(settings)
    for _ in range(4):
        assert cli(settings, "jobs", "trigger", "older", "--url", api.url, token=token).returncode == 0
        deadline = time.monotonic() + 20
        while (await _idle(api, token, "older")) is False:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
    async with following(api, settings, token, "older", "--limit", "2") as follower:
        first = [await read_until(follower, "tick") for _ in range(2)]  # the listing: runs #3 and #4
        assert ["#3 " in first[0][0], "#4 " in first[1][0]] == [True, True], first
        assert cli(settings, "jobs", "trigger", "older", "--url", api.url, token=token).returncode == 0
        listed = await read_until(follower, "tick")
        assert len(listed) == 1 or "running" in listed[0], listed  # the new run only: #5, never #1 or #2 again
        assert "#5 " in listed[-1] and "success" in listed[-1], listed


async def _idle(api: ApiProcess, token: str, job_id: str) -> bool:
    async with api.client(headers={"Authorization": f"Bearer {token}"}) as client:
        return (await client.get(f"/api/jobs/{job_id}")).json()["running"] is False


async def test_runs_show_prints_the_run_with_what_it_said(api: ApiProcess, settings: Settings) -> None:
    await make_job(id="shown", type="test_chatty", schedule="0 0 1 1 *", payload={"lines": 2, "fail": "kaput"})
    token = make_token(settings)
    assert cli(settings, "jobs", "trigger", "shown", "--url", api.url, token=token).returncode == 0
    deadline = time.monotonic() + 20
    while "error" not in (logs := cli(settings, "jobs", "logs", "shown", "--url", api.url, token=token)).stdout:
        assert time.monotonic() < deadline, logs.stdout + logs.stderr
        await asyncio.sleep(0.3)
    run_id = logs.stdout.split("#")[1].split()[0]
    shown = cli(settings, "runs", "show", run_id, "--url", api.url, token=token)
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert f"#{run_id}" in out.splitlines()[0] and "error" in out.splitlines()[0]
    assert "progress: 2 of 2  line 2" in out
    assert "error:    RuntimeError" in out and "RuntimeError: kaput" in out and "in _explode" in out
    assert "log:      2 lines" in out
    assert f"  #{run_id} " in out and 'line 2 of 2  {"i":2}' in out
    as_json = json.loads(cli(settings, "runs", "show", run_id, "--json", "--url", api.url, token=token).stdout)
    assert [line["seq"] for line in as_json["log"]] == [1, 2] and as_json["errorType"] == "RuntimeError"
    missing = cli(settings, "runs", "show", "987654", "--url", api.url, token=token)
    assert (missing.returncode, missing.stderr.strip()) == (1, "jobs-gateway: 404 Run '987654' not found")


@pytest.mark.parametrize("command", ["run", "uvicorn with --ws-per-message-deflate false"])
async def test_the_api_serves_websockets_without_per_message_compression(
    settings: Settings, orm: Runtime, tmp_path: Path, command: str
) -> None:
    """So that one `jobStatus` frame, prepared once, goes to every socket (app.adapters.uvicorn)."""
    port = free_port()
    api = ApiProcess(settings, tmp_path, port, embedded_worker=False)
    if command == "run":
        api.argv = [CLI, "run"]
        api.env.update({"HOST": "127.0.0.1", "PORT": str(port)})
    with api:
        url = f"ws://127.0.0.1:{port}/graphql"
        async with connect(url, subprotocols=[Subprotocol("graphql-transport-ws")], compression="deflate") as ws:
            assert ws.response is not None and ws.response.status_code == 101
            assert "Sec-WebSocket-Extensions" not in ws.response.headers
            await ws.send(json.dumps({"type": "connection_init", "payload": {"token": make_token(settings)}}))
            assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "connection_ack"


@pytest.mark.serial
def test_worker_exits_non_zero_once_redis_is_gone_for_good(settings: Settings, tmp_path: Path) -> None:
    with RedisServer() as redis_server:  # our own, stopped below
        own = settings.model_copy(update={"redis_url": redis_server.url})
        port = free_port()
        worker = WorkerProcess(own, tmp_path, "cli-worker", worker_redis_retry_seconds=1, worker_metrics_port=port)
        worker.argv = [CLI, "worker"]
        # The metrics server starts last in the worker's start-up: once it answers, the worker is up.
        worker.ready_text = "worker metrics on"
        worker.start()
        try:
            assert httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).status_code == 200
            redis_server.stop()
            started = time.monotonic()
            code = worker.wait(60)
        finally:
            worker.stop()
    print(f"worker gave up {time.monotonic() - started:.1f} s after Redis stopped")
    assert code == 1, worker.tail()
    assert "Redis unreachable for longer than WORKER_REDIS_RETRY_SECONDS" in worker.tail()


def test_worker_whose_metrics_port_is_taken_exits_naming_the_port_not_redis(settings: Settings, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        worker = WorkerProcess(settings, tmp_path, "port-worker", worker_metrics_port=port)
        worker.ready_text = ""  # it is expected to exit during start-up
        worker.start()
        try:
            code = worker.wait(60)
        finally:
            worker.stop()
    assert code == 1, worker.tail()
    assert f"cannot serve worker metrics on 127.0.0.1:{port} (WORKER_METRICS_PORT" in worker.tail()
    assert "Redis unreachable" not in worker.tail()
