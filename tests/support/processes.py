"""Real jobs-gateway processes for end-to-end tests: `jobs-gateway worker` and uvicorn."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr

from app.platform.config import Settings

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

# Settings fields passed to child processes as environment variables.
_FIELDS = (
    "app_env database_url redis_url jwt_secret heartbeat_seconds lease_ttl_seconds queued_lease_ttl_seconds "
    "worker_poll_delay reconcile_interval_seconds misfire_grace_seconds shutdown_grace_seconds job_timeout_seconds "
    "scheduler_timezone log_level embedded_worker worker_max_jobs worker_idle_poll_seconds "
    "ws_max_message_bytes ws_init_timeout_seconds ws_max_sockets_per_address ws_max_sockets_per_subject "
    "ws_max_operations_per_socket http_max_concurrency http_keep_alive_seconds"
).split()


def env_for(settings: Settings, **extra: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "REDIS_", "JWT_"))}
    for name in _FIELDS:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if value is not None:
            env[name.upper()] = str(value).lower() if isinstance(value, bool) else str(value)
    env["JOB_TYPE_MODULES"] = ",".join(settings.job_type_modules)
    env["PYTHONPATH"] = str(ROOT)
    env.update({k.upper(): str(v) for k, v in extra.items()})
    return env


class _Process:
    ready_text = ""

    def __init__(self, argv: list[str], env: dict[str, str], workdir: Path, name: str) -> None:
        self.argv, self.env, self.workdir, self.name = argv, env, workdir, name
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = self.log_path.open("ab")
        # cwd is the test's own folder, so a developer's .env never leaks into the test.
        self.proc = subprocess.Popen(self.argv, env=self.env, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while self.ready_text not in self.log_path.read_text(errors="replace")[offset:]:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start:\n{self.tail()}")
            time.sleep(0.05)

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def __enter__(self) -> _Process:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


class WorkerProcess(_Process):
    """`jobs-gateway worker`, exactly as the README runs a standalone worker."""

    ready_text = "Starting worker for"

    def __init__(self, settings: Settings, workdir: Path, name: str = "worker", **extra: Any) -> None:
        super().__init__([str(BIN / "jobs-gateway"), "worker"], env_for(settings, **extra), workdir, name)


class ApiProcess(_Process):
    """`jobs-gateway serve` on a loopback port, as the README runs an API instance."""

    # Logged once the socket is bound; "Application startup complete" comes a moment before that.
    ready_text = "Uvicorn running on"

    def __init__(self, settings: Settings, workdir: Path, port: int, name: str = "api", **extra: Any) -> None:
        env = env_for(settings, host="127.0.0.1", port=port, **extra)
        super().__init__([str(BIN / "jobs-gateway"), "serve"], env, workdir, name)
        self.url = f"http://127.0.0.1:{port}"

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=10, **kwargs)


async def commit_from_another_process(sqlite_file: str, statement: str) -> None:
    """Run one statement and commit it in a separate Python process, as another instance would."""
    code = f"import sqlite3; c = sqlite3.connect({sqlite_file!r}); c.execute({statement!r}); c.commit()"
    child = await asyncio.create_subprocess_exec(sys.executable, "-c", code)
    try:
        assert await asyncio.wait_for(child.wait(), 30) == 0
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
