"""Shared harness of the benchmarks: modes, figures, result files, real processes and meters.

Every benchmark starts its own redis-server (and PostgreSQL, API and worker processes) on loopback the way
`make run` and the README do, measures its baseline in the same run, and stops everything it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import shlex
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any, Literal, TypeVar

import psutil  # type: ignore[import-untyped]
import redis as sync_redis

from app.api.auth import ADMIN_PERMISSION, issue_token
from app.platform import db
from app.platform.config import Settings, get_settings
from tests.support.processes import ApiProcess, WorkerProcess
from tests.support.servers import PostgresCluster, RedisServer, free_port, postgres_unavailable_reason

__all__ = [
    "ApiProcess",
    "CpuBudget",
    "CpuMeter",
    "PostgresCluster",
    "RedisCommandCounter",
    "RedisServer",
    "Stack",
    "WorkerProcess",
    "bench_settings",
    "cores_setting",
    "cpu_budget_unavailable_reason",
    "figure",
    "free_port",
    "migrated_postgres",
    "migrated_sqlite",
    "mode",
    "percentile",
    "pick",
    "postgres_unavailable_reason",
    "remove_stale_cpu_budgets",
    "summary",
    "token_for",
    "write_result",
]

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "bench" / "results"
SECRET = "bench-secret-" + "x" * 40
BENCH_JOB_TYPES = "bench.job_types"

Mode = Literal["smoke", "quick", "full"]
T = TypeVar("T")


# --- modes and figures ---------------------------------------------------------------------------------------


def mode() -> Mode:
    """BENCH_SMOKE=1 → smoke (seconds, CI), BENCH_FULL=1 → full sizes, otherwise quick."""
    if os.environ.get("BENCH_SMOKE", "") not in ("", "0"):
        return "smoke"
    if os.environ.get("BENCH_FULL", "") not in ("", "0"):
        return "full"
    return "quick"


def pick(*, smoke: T, quick: T, full: T) -> T:
    """The size for the current mode."""
    return {"smoke": smoke, "quick": quick, "full": full}[mode()]


def cores_setting(name: str, default: float) -> float:
    """A CPU share from the environment, in cores: at least 0.01 (the smallest CFS quota is 1 ms per 100 ms)
    and at most the machine's cores."""
    raw = os.environ.get(name, "")
    try:
        cores = float(raw) if raw else default
    except ValueError:
        raise SystemExit(f"{name}={raw!r} is not a number of cores") from None
    if not 0.01 <= cores <= (os.cpu_count() or 1):
        raise SystemExit(f"{name}={raw!r}: give between 0.01 and {os.cpu_count()} cores")
    return cores


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sample."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def summary(values: Sequence[float]) -> dict[str, float]:
    """p50/p99/max of one repetition's samples (for printing and for figures)."""
    return {"p50": percentile(values, 50), "p99": percentile(values, 99), "max": max(values) if values else 0.0}


def figure(
    label: str,
    unit: str,
    runs: Sequence[float],
    *,
    target: str | None = None,
    met: bool | None = None,
    baseline: bool = False,
) -> dict[str, Any]:
    """One reported figure: each repetition's value, and their median with min and max."""
    values = [float(v) for v in runs]
    return {
        "label": label,
        "unit": unit,
        "runs": [round(v, 4) for v in values],
        "median": round(statistics.median(values), 4) if values else None,
        "min": round(min(values), 4) if values else None,
        "max": round(max(values), 4) if values else None,
        "target": target,
        "met": met,
        "baseline": baseline,
    }


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "?"


def _redis_server_version() -> str:
    exe = shutil.which("redis-server") or "/usr/bin/redis-server"
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10, check=False).stdout
    except OSError:
        return "?"
    for part in out.split():
        if part.startswith("v="):
            return part[2:]
    return out.strip() or "?"


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or "?"


def machine() -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
    }


def versions() -> dict[str, str]:
    return {
        "redis-server": _redis_server_version(),
        "arq": _version("arq"),
        "redis-py": _version("redis"),
        "strawberry": _version("strawberry-graphql"),
        "fastapi": _version("fastapi"),
        "uvicorn": _version("uvicorn"),
        "tortoise": _version("tortoise-orm"),
    }


def results_dir() -> Path:
    """Smoke runs write to a gitignored folder, never over committed quick/full results."""
    path = RESULTS_DIR / "smoke" if mode() == "smoke" else RESULTS_DIR
    path.mkdir(parents=True, exist_ok=True)
    return path


def command_line() -> str:
    env = " ".join(f"{k}={os.environ[k]}" for k in ("BENCH_SMOKE", "BENCH_FULL") if os.environ.get(k))
    module = sys.argv[0]
    if module.endswith(".py") and Path(module).resolve().is_relative_to(ROOT):
        rel = Path(module).resolve().relative_to(ROOT).with_suffix("")
        module = "-m " + ".".join(rel.parts)
    cmd = f".venv/bin/python {module} {shlex.join(sys.argv[1:])}".strip()
    return f"{env} {cmd}".strip()


def write_result(name: str, title: str, figures: list[dict[str, Any]], *, notes: str = "") -> Path:
    """bench/results/<name>.json (bench/results/smoke/ in smoke mode)."""
    data = {
        "name": name,
        "title": title,
        "mode": mode(),
        "command": command_line(),
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(),
        "versions": versions(),
        "figures": figures,
        "notes": notes,
    }
    path = results_dir() / f"{name}.json"
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {path.relative_to(ROOT)}")
    for f in figures:
        mark = "" if f["met"] is None else (" ✅" if f["met"] else " ❌")
        base = " (baseline)" if f["baseline"] else ""
        print(f"  {f['label']}{base}: {f['median']} {f['unit']} ({f['min']}–{f['max']}){mark}")
    return path


# --- settings, databases, tokens -----------------------------------------------------------------------------


def bench_settings(*, database_url: str, redis_url: str, **overrides: Any) -> Settings:
    """Production-like settings (defaults unless overridden), with the benchmark job types loaded."""
    base: dict[str, Any] = {
        "app_env": "test",
        "jwt_secret": SECRET,
        "job_type_modules": [BENCH_JOB_TYPES],
        # INFO as in production; the process helpers also wait for uvicorn's INFO "Uvicorn running on" line.
        "log_level": "INFO",
        # Tens of thousands of subscribers from this one address and token (B2): past the per-process caps, which
        # bound what one client may open, not what the benchmark measures.
        "ws_max_sockets_per_address": 1_000_000,
        "ws_max_sockets_per_subject": 1_000_000,
        "http_max_concurrency": 1_000_000,
    }
    base.update(overrides)
    return get_settings(_env_file=None, database_url=database_url, redis_url=redis_url, **base)


def migrated_sqlite(directory: Path, name: str = "jobs.sqlite3") -> str:
    directory.mkdir(parents=True, exist_ok=True)
    url = f"sqlite://{directory / name}"
    asyncio.run(db.migrate(bench_settings(database_url=url, redis_url="redis://127.0.0.1:1/0")))
    return url


def migrated_postgres(cluster: PostgresCluster, name: str) -> str:
    url = cluster.create_database(name)
    asyncio.run(db.migrate(bench_settings(database_url=url, redis_url="redis://127.0.0.1:1/0")))
    return url


def token_for(settings: Settings) -> str:
    return issue_token(settings, sub="bench", permissions=[ADMIN_PERMISSION], ttl=timedelta(hours=2))


# --- processes -----------------------------------------------------------------------------------------------


class Stack(contextlib.ExitStack):
    """Everything one benchmark starts, stopped in reverse order on exit (also on errors)."""

    def __init__(self, prefix: str = "bench-") -> None:
        super().__init__()
        self.workdir = Path(tempfile.mkdtemp(prefix=prefix))
        self.callback(shutil.rmtree, self.workdir, True)

    def redis(self, *extra_args: str) -> RedisServer:
        return self.enter_context(RedisServer(extra_args=extra_args))

    def postgres(self) -> PostgresCluster:
        reason = postgres_unavailable_reason()
        if reason is not None:
            raise RuntimeError(reason)
        return self.enter_context(PostgresCluster())

    def api(self, settings: Settings, name: str = "api", **env: Any) -> ApiProcess:
        """`uvicorn app.main:app` on a free loopback port (embedded worker per settings)."""
        proc = ApiProcess(settings, self.workdir, free_port(), name=name, **env)
        self.callback(proc.stop)
        proc.start(timeout=120)
        return proc

    def worker(self, settings: Settings, name: str = "worker", **env: Any) -> WorkerProcess:
        """`jobs-gateway worker`, as the README runs a standalone worker."""
        proc = WorkerProcess(settings, self.workdir, name=name, **env)
        self.callback(proc.stop)
        proc.start(timeout=120)
        return proc

    def popen(self, argv: list[str], name: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Any other child (a baseline worker, a client process); killed on exit."""
        log = (self.workdir / f"{name}.log").open("ab")
        proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        log.close()

        def stop() -> None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)

        self.callback(stop)
        return proc

    def log_of(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


def child_env(**extra: Any) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    env.update({k: str(v) for k, v in extra.items()})
    return env


# --- meters --------------------------------------------------------------------------------------------------


class CpuMeter:
    """CPU time of a process (and its children) over an interval, as % of one core, and its RSS."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self._t0 = 0.0
        self._cpu0 = 0.0

    def _cpu(self) -> float:
        total = 0.0
        for p in [self.proc, *self.proc.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
        return total

    def start(self) -> None:
        self._t0, self._cpu0 = time.monotonic(), self._cpu()

    def percent(self) -> float:
        """% of one core since start()."""
        elapsed = time.monotonic() - self._t0
        return 100.0 * (self._cpu() - self._cpu0) / elapsed if elapsed > 0 else 0.0

    def rss_mb(self) -> float:
        return float(self.proc.memory_info().rss) / 2**20


class RedisCommandCounter:
    """Commands/s a Redis server processed over an interval (INFO's total_commands_processed delta),
    net of the INFO calls this counter makes itself."""

    def __init__(self, url: str) -> None:
        self.client = sync_redis.Redis.from_url(url)
        self._t0 = 0.0
        self._n0 = 0

    def _count(self) -> int:
        info: dict[str, Any] = self.client.info("stats")  # type: ignore[assignment]
        return int(info["total_commands_processed"])

    def start(self) -> None:
        self._n0, self._t0 = self._count(), time.monotonic()

    def rate(self) -> float:
        n, t = self._count(), time.monotonic()
        # The start() INFO is counted in the delta; the closing one is not yet.
        return max(0, n - self._n0 - 1) / (t - self._t0) if t > self._t0 else 0.0

    def close(self) -> None:
        self.client.close()


class CpuBudget:
    """A Linux cgroup that caps the processes put in it at `cores` of CPU time (CFS quota per 100 ms period).

    A process on its own budget no longer competes with the rest of the machine for it: this is how B5 shows
    what a second worker adds when each worker has CPU of its own, on a machine too small to give each worker
    a core and the database cores of their own.
    """

    PERIOD_US = 100_000
    PREFIX = "jobs-gateway-"

    def __init__(self, name: str, cores: float) -> None:
        # The creator's pid in the name lets remove_stale_cpu_budgets() tell a killed run's groups apart.
        self.path = _cgroup_cpu_root() / f"{self.PREFIX}{os.getpid()}-{name}"
        self._origins: dict[int, Path] = {}
        self.path.mkdir(exist_ok=True)
        quota = round(cores * self.PERIOD_US)
        try:
            if _cgroup_cpu_root() == CGROUP1_CPU:
                (self.path / "cpu.cfs_period_us").write_text(str(self.PERIOD_US))
                (self.path / "cpu.cfs_quota_us").write_text(str(quota))
            else:
                (self.path / "cpu.max").write_text(f"{quota} {self.PERIOD_US}")
        except OSError:
            self.path.rmdir()
            raise

    def add(self, pid: int) -> None:
        """Moves a process, its threads and its children (later children are born inside)."""
        for p in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
            with contextlib.suppress(ProcessLookupError, FileNotFoundError):  # a child that has just exited
                self._origins[p.pid] = _cgroup_of(p.pid)
                (self.path / "cgroup.procs").write_text(str(p.pid))

    def remove(self) -> None:
        """Gives the processes still alive back to the groups they came from and deletes this one."""
        for pid in map(int, (self.path / "cgroup.procs").read_text().split()):
            with contextlib.suppress(ProcessLookupError):
                (self._origins.get(pid, self.path.parent) / "cgroup.procs").write_text(str(pid))
        try:
            self.path.rmdir()
        except OSError as exc:
            print(f"  could not remove {self.path}: {exc}", flush=True)


CGROUP1_CPU = Path("/sys/fs/cgroup/cpu")
CGROUP2 = Path("/sys/fs/cgroup")


def _cgroup_cpu_root() -> Path:
    if (CGROUP1_CPU / "cpu.cfs_quota_us").exists():
        return CGROUP1_CPU
    return CGROUP2


def _cgroup_of(pid: int) -> Path:
    """The CPU cgroup a process is in, from /proc/<pid>/cgroup ("id:controllers:path" lines)."""
    v1 = _cgroup_cpu_root() == CGROUP1_CPU
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if (v1 and "cpu" in controllers.split(",")) or (not v1 and controllers == ""):
            return _cgroup_cpu_root() / path.lstrip("/")
    return _cgroup_cpu_root()


def remove_stale_cpu_budgets() -> None:
    """Deletes the empty groups of earlier runs that were killed before they could remove them."""
    for group in _cgroup_cpu_root().glob(f"{CpuBudget.PREFIX}*"):
        creator = group.name.removeprefix(CpuBudget.PREFIX).split("-", 1)[0]
        if creator.isdigit() and not psutil.pid_exists(int(creator)):
            with contextlib.suppress(OSError):
                group.rmdir()


def cpu_budget_unavailable_reason(cores: float) -> str | None:
    """Why a CpuBudget of `cores` cannot work here (not Linux, no cgroup CPU controller, not writable, a
    quota the parent group refuses), or None."""
    root = _cgroup_cpu_root()
    if root == CGROUP2:
        controllers = CGROUP2 / "cgroup.subtree_control"
        if not controllers.exists() or "cpu" not in controllers.read_text().split():
            return "no cgroup CPU controller is enabled here"
    if not os.access(root, os.W_OK):
        return f"{root} is not writable (needs root)"
    # The whole path, on a throwaway child: containers may allow creating a group but not moving into it.
    child = subprocess.Popen(["sleep", "30"])
    budget: CpuBudget | None = None
    try:
        budget = CpuBudget("probe", cores)
        budget.add(child.pid)
    except OSError as exc:
        return f"cannot cap a process at {cores:g} of a core with a cgroup under {root}: {exc}"
    finally:
        child.kill()
        child.wait()
        if budget is not None:
            budget.remove()
    return None


@contextlib.contextmanager
def timed(label: str) -> Iterator[None]:
    t0 = time.monotonic()
    yield
    print(f"[{label}: {time.monotonic() - t0:.1f}s]", flush=True)


# --- direct SQL (seeding and reading results without the ORM: one process may use both backends) ---------


class SqlDb:
    """A plain connection to a DATABASE_URL for seeding rows in bulk and reading results.

    SQL is written with `?` placeholders; they become `$n` on PostgreSQL."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.postgres = url.startswith(("postgres://", "postgresql://"))
        self._pg: Any = None
        self._lite: sqlite3.Connection | None = None

    async def __aenter__(self) -> SqlDb:
        if self.postgres:
            import asyncpg

            self._pg = await asyncpg.connect(self.url.replace("postgres://", "postgresql://", 1))
        else:
            self._lite = sqlite3.connect(self.url.removeprefix("sqlite://"), isolation_level=None, timeout=30)
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._pg is not None:
            await self._pg.close()
        if self._lite is not None:
            self._lite.close()

    def _sql(self, sql: str) -> str:
        if not self.postgres:
            return sql
        parts = sql.split("?")
        return "".join(p + (f"${i + 1}" if i < len(parts) - 1 else "") for i, p in enumerate(parts))

    async def execute(self, sql: str, *params: Any) -> None:
        if self._pg is not None:
            await self._pg.execute(self._sql(sql), *params)
        else:
            assert self._lite is not None
            self._lite.execute(sql, params)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if self._pg is not None:
            await self._pg.executemany(self._sql(sql), rows)
        else:
            assert self._lite is not None
            self._lite.execute("BEGIN")
            self._lite.executemany(sql, rows)
            self._lite.execute("COMMIT")

    async def fetch(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        if self._pg is not None:
            return [tuple(r) for r in await self._pg.fetch(self._sql(sql), *params)]
        assert self._lite is not None
        return list(self._lite.execute(sql, params).fetchall())

    async def insert_jobs(self, ids: Sequence[str], *, job_type: str, schedule: str, enabled: bool) -> None:
        """Job rows as the API would create them (without scheduling them: the workers' reconcile does)."""
        now = datetime.now(UTC)
        rows = [
            (j, j, "bench", job_type, "{}", schedule, None, None, False, enabled, None, None, None, None, now, now)
            for j in ids
        ]
        await self.executemany(
            "INSERT INTO job (id, name, description, type, payload, schedule, timezone, timeout_seconds, builtin, "
            "enabled, next_run_at, last_run_at, last_result, last_duration_ms, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )


def parse_ts(value: Any) -> float:
    """A timestamp column (datetime on PostgreSQL, ISO text on SQLite) as epoch seconds."""
    if isinstance(value, datetime):
        return value.timestamp()
    return datetime.fromisoformat(str(value)).timestamp()
