"""Real, throwaway redis-server and PostgreSQL processes on free loopback ports.

Used by pytest fixtures, benchmarks and reliability tests. Nothing here is mocked: each server is the
distribution's binary, with its data and log in a private temporary directory that is removed on exit.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal, Protocol, Self

__all__ = [
    "PostgresCluster",
    "RedisServer",
    "ServerError",
    "free_port",
    "port_is_free",
    "postgres_available",
    "postgres_unavailable_reason",
    "redis_ping",
]

STARTUP_TIMEOUT = 10.0
# An automatically chosen port can be taken by someone else between free_port() and the server's bind().
_PORT_ATTEMPTS = 3
_ADDRESS_IN_USE = "Address already in use"


class ServerError(RuntimeError):
    """A server binary is missing or did not start; the message carries the log tail."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Servers set SO_REUSEADDR too, so TIME_WAIT leftovers of a stopped server don't count as "in use".
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:]) or f"(empty log at {path})"


# --- cleanup safety net -------------------------------------------------------------------------------------


class _Stoppable(Protocol):
    def close(self) -> None: ...


_live: set[_Stoppable] = set()
_live_lock = threading.Lock()


def _track(server: _Stoppable) -> None:
    with _live_lock:
        _live.add(server)


def _untrack(server: _Stoppable) -> None:
    with _live_lock:
        _live.discard(server)


@atexit.register
def _close_all() -> None:
    """A test that forgot `with`/stop() (or an interrupted session) must not leave servers holding ports."""
    with _live_lock:
        servers = list(_live)
    for server in servers:
        with contextlib.suppress(Exception):
            server.close()


# atexit does not run when the test process is SIGKILLed (CI timeouts, an OOM kill, kill -9 of a hung
# run). This watchdog holds the read end of a pipe whose write end only the test process has: EOF means
# the test process is gone, so it signals the server through its pidfile and removes the directory.
_WATCHDOG_SCRIPT = """
cat >/dev/null
pid=$(head -n 1 "$1" 2>/dev/null) || exit 0
[ -n "$pid" ] && kill -"$2" "$pid" 2>/dev/null
i=0
while [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
rm -rf "$3"
"""


class _Watchdog:
    def __init__(self, pidfile: Path, sig: str, workdir: Path) -> None:
        argv = ["sh", "-c", _WATCHDOG_SCRIPT, "servers-watchdog", str(pidfile), sig, str(workdir)]
        # Its own session, so a Ctrl-C aimed at pytest leaves it to do its job if atexit doesn't get to run;
        # no stdout/stderr, so it never keeps a `make test | tee` pipeline open.
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )

    def cancel(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)
        if self.proc.stdin is not None:
            self.proc.stdin.close()


# --- redis ----------------------------------------------------------------------------------------------------


def find_redis_server() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    if os.access("/usr/bin/redis-server", os.X_OK):
        return "/usr/bin/redis-server"
    raise ServerError(
        "redis-server is not installed (looked on PATH and at /usr/bin/redis-server). "
        "Install it with `sudo apt-get install redis-server` (Debian/Ubuntu) or `make system-deps`."
    )


def redis_ping(port: int, host: str = "127.0.0.1", timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def redis_server_pid(port: int, host: str = "127.0.0.1", timeout: float = 1.0) -> int | None:
    """The process_id from INFO: a PONG alone could come from another server already on the port."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock, sock.makefile("rb") as reply:
            sock.sendall(b"INFO server\r\n")
            header = reply.readline()
            if not header.startswith(b"$"):
                return None
            body = reply.read(int(header[1:]) + 2).decode(errors="replace")
    except (OSError, ValueError):
        return None
    for line in body.splitlines():
        if line.startswith("process_id:"):
            return int(line.partition(":")[2])
    return None


class RedisServer:
    """A redis-server subprocess on 127.0.0.1 without persistence.

    stop()/kill() keep the port and the directory, so start() brings the server back where clients expect
    it: that is what restart tests need. Leaving the `with` block (or close()) also removes the directory.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        extra_args: Sequence[str] = (),
        startup_timeout: float = STARTUP_TIMEOUT,
    ) -> None:
        self.executable = find_redis_server()
        self._port_pinned = port is not None
        self.port = port if port is not None else free_port()
        self.extra_args = list(extra_args)
        self.startup_timeout = startup_timeout
        self.workdir = Path(tempfile.mkdtemp(prefix="redis-server-"))
        self.log_path = self.workdir / "redis.log"
        self.pid_path = self.workdir / "redis.pid"
        self.proc: subprocess.Popen[bytes] | None = None
        self._ever_started = False
        self._listening = False
        self._watchdog = _Watchdog(self.pid_path, "TERM", self.workdir)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def url_for(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def argv(self) -> list[str]:
        return [
            self.executable,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.workdir),
            "--daemonize", "no",
            "--pidfile", str(self.pid_path),
            *self.extra_args,
        ]  # fmt: skip

    def ping(self, timeout: float = 1.0) -> bool:
        return redis_ping(self.port, timeout=timeout)

    def start(self) -> None:
        if self.running:
            return
        attempts = 1 if self._port_pinned or self._ever_started else _PORT_ATTEMPTS
        for attempt in range(attempts):
            try:
                self._start_once()
            except ServerError as exc:
                if attempt + 1 < attempts and _ADDRESS_IN_USE in str(exc):
                    self.port = free_port()
                    continue
                raise
            self._ever_started = True
            return

    def _start_once(self) -> None:
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv(),
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        _track(self)
        deadline = time.monotonic() + self.startup_timeout
        while redis_server_pid(self.port, timeout=0.5) != self.proc.pid:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                reason = "exited" if self.proc.poll() is not None else f"did not answer PING in {self.startup_timeout}s"
                self._terminate()
                log_text = self.log_path.read_bytes()[offset:].decode(errors="replace")
                tail = "\n".join(log_text.splitlines()[-40:])
                raise ServerError(f"redis-server on 127.0.0.1:{self.port} {reason}; log {self.log_path}:\n{tail}")
            time.sleep(0.02)
        self._listening = True

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful SIGTERM, then SIGKILL; returns once the port is released."""
        self._terminate(timeout)

    def kill(self) -> None:
        """SIGKILL, as a crash would: no shutdown work, connections just drop."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._after_exit()

    def restart(self) -> None:
        self.stop()
        self.start()

    def _terminate(self, timeout: float = 10.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._after_exit()

    def _after_exit(self) -> None:
        _untrack(self)
        # Redis leaves it behind after SIGKILL; the watchdog must not signal a recycled pid later.
        self.pid_path.unlink(missing_ok=True)
        if not self._listening:
            return  # never bound the port (e.g. someone else holds it): nothing of ours to wait for
        self._listening = False
        # The process is gone but the kernel may close its listening socket a moment later.
        deadline = time.monotonic() + 5
        while not port_is_free(self.port) and time.monotonic() < deadline:
            time.sleep(0.02)

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.log_path, lines)

    def close(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self._watchdog.cancel()

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RedisServer(port={self.port}, running={self.running}, workdir={str(self.workdir)!r})"


# --- postgres -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PostgresBinaries:
    bindir: Path

    def __getitem__(self, name: str) -> str:
        return str(self.bindir / name)

    def has(self, name: str) -> bool:
        return os.access(self.bindir / name, os.X_OK)


def _pg_version_key(bindir: str) -> tuple[int, ...]:
    version = Path(bindir).parent.name
    return tuple(int(part) for part in version.split(".") if part.isdigit()) or (0,)


def find_postgres_binaries() -> PostgresBinaries | None:
    """initdb, pg_ctl and postgres from one installation: PATH first, then Debian's versioned directories.

    The PATH entry is resolved because Debian's /usr/bin client wrappers and /usr/local/bin symlinks point
    into /usr/lib/postgresql/<version>/bin, and the server and its clients must come from the same version.
    """
    candidates: list[Path] = []
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    candidates.extend(
        Path(d) for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_pg_version_key, reverse=True)
    )
    for bindir in candidates:
        binaries = PostgresBinaries(bindir)
        if all(binaries.has(name) for name in ("initdb", "pg_ctl", "postgres")):
            return binaries
    return None


@dataclass(frozen=True)
class _RunAs:
    """The account the server runs as: initdb and postgres refuse to run as root."""

    name: str
    uid: int
    gid: int


def _unprivileged_account() -> _RunAs | None:
    """None when not root; otherwise `postgres` if the distribution created it, else `nobody`."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return _RunAs(name=name, uid=entry.pw_uid, gid=entry.pw_gid)
    raise ServerError("running as root and neither a `postgres` nor a `nobody` account exists to run PostgreSQL as")


def _check_traversable(directory: Path, account: _RunAs) -> None:
    """Fail early and clearly where initdb would only say "permission denied" (e.g. TMPDIR under /root)."""
    for path in (directory, *directory.parents):
        st = path.stat()
        if st.st_uid != account.uid and not st.st_mode & stat.S_IXOTH:
            raise ServerError(
                f"{account.name} cannot reach {directory}: {path} is not world-searchable; "
                "point TMPDIR at a directory such as /tmp"
            )


def postgres_unavailable_reason() -> str | None:
    """Why PostgreSQL tests cannot run here, or None if they can."""
    if find_postgres_binaries() is None:
        return (
            "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found on PATH or in "
            "/usr/lib/postgresql/*/bin; install them with `sudo apt-get install postgresql`"
        )
    try:
        _unprivileged_account()
    except ServerError as exc:
        return str(exc)
    return None


def postgres_available() -> bool:
    return postgres_unavailable_reason() is None


def _pg_env() -> dict[str, str]:
    # A developer's PGHOST/PGPORT/PGDATA etc. must not redirect the throwaway cluster's tools; the C locale
    # exists on every machine, whereas LANG may name a locale that was never generated.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    env.pop("LANG", None)
    return env


class PostgresCluster:
    """A throwaway PostgreSQL cluster (initdb + pg_ctl) on 127.0.0.1, durability switched off for speed.

    As root the binaries run as the `postgres` account (or `nobody`) via subprocess's user/group switch,
    and the temporary directory is chowned to it.
    """

    superuser = "postgres"

    def __init__(
        self,
        port: int | None = None,
        *,
        startup_timeout: float = 30.0,
        settings: dict[str, str] | None = None,
    ) -> None:
        binaries = find_postgres_binaries()
        if binaries is None:
            raise ServerError(postgres_unavailable_reason() or "PostgreSQL binaries not found")
        self.binaries = binaries
        self.run_as = _unprivileged_account()
        self._port_pinned = port is not None
        self.port = port if port is not None else free_port()
        self.startup_timeout = startup_timeout
        self.settings = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off", **(settings or {})}
        if self.run_as is not None:
            _check_traversable(Path(tempfile.gettempdir()), self.run_as)
        self.workdir = Path(tempfile.mkdtemp(prefix="postgres-"))
        self.datadir = self.workdir / "data"
        self.log_path = self.workdir / "postgres.log"
        self._initialized = False
        self._ever_started = False
        if self.run_as is not None:
            # mkdtemp makes a 0700 root directory; the server account must own it to create data and sockets.
            os.chown(self.workdir, self.run_as.uid, self.run_as.gid)
        self._watchdog = _Watchdog(self.datadir / "postmaster.pid", "QUIT", self.workdir)  # QUIT: immediate stop

    # Subprocess plumbing ------------------------------------------------------------------------------------

    def _run(self, argv: list[str], log_name: str, *, as_server: bool = True, timeout: float = 60.0) -> None:
        log_path = self.workdir / log_name
        switch = self.run_as if as_server else None
        with log_path.open("ab") as log:
            if switch is not None:
                os.fchown(log.fileno(), switch.uid, switch.gid)
            try:
                result = subprocess.run(
                    argv,
                    cwd=self.workdir,
                    env=_pg_env(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    timeout=timeout,
                    check=False,
                    user=switch.uid if switch else None,
                    group=switch.gid if switch else None,
                    extra_groups=[] if switch else None,
                )
            except subprocess.TimeoutExpired:
                raise ServerError(f"{Path(argv[0]).name} timed out after {timeout}s:\n{_tail(log_path)}") from None
        if result.returncode != 0:
            details = _tail(log_path)
            if log_path != self.log_path and self.log_path.exists():
                details += f"\n--- {self.log_path}:\n{_tail(self.log_path)}"
            raise ServerError(f"`{' '.join(argv)}` failed with exit code {result.returncode}:\n{details}")

    def _initdb(self) -> None:
        argv = [
            self.binaries["initdb"],
            "-D", str(self.datadir),
            "-U", self.superuser,
            "--auth=trust",
            "-E", "UTF8",
            "--locale=C",
            "--no-sync",  # a throwaway cluster does not need initdb's final fsync of every file
        ]  # fmt: skip
        self._run(argv, "initdb.log", timeout=120)
        self._initialized = True

    def _server_options(self) -> str:
        options = [f"-p {self.port}", f"-k {self.workdir}", "-c listen_addresses=127.0.0.1"]
        options += [f"-c {key}={value}" for key, value in self.settings.items()]
        return " ".join(options)

    # Lifecycle ----------------------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        pid = self._postmaster_pid()
        return pid is not None and _pid_alive(pid)

    @property
    def pid(self) -> int | None:
        """The postmaster's pid (pg_ctl daemonizes it, so it is not our child)."""
        return self._postmaster_pid() if self.running else None

    def start(self) -> None:
        if not self._initialized:
            self._initdb()
        if self.running:
            return
        attempts = 1 if self._port_pinned or self._ever_started else _PORT_ATTEMPTS
        for attempt in range(attempts):
            offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            try:
                self._pg_ctl_start()
            except ServerError:
                log = self.log_path.read_bytes()[offset:].decode(errors="replace") if self.log_path.exists() else ""
                if attempt + 1 < attempts and _ADDRESS_IN_USE in log:
                    self.port = free_port()
                    continue
                raise
            self._ever_started = True
            return

    def _pg_ctl_start(self) -> None:
        argv = [
            self.binaries["pg_ctl"],
            "-D", str(self.datadir),
            "-l", str(self.log_path),
            "-o", self._server_options(),
            "-t", str(int(self.startup_timeout)),
            "-w", "start",
        ]  # fmt: skip
        _track(self)
        try:
            self._run(argv, "pg_ctl.log", timeout=self.startup_timeout + 10)
        except ServerError:
            self._kill_postmaster()
            _untrack(self)
            raise

    def stop(self, mode: Literal["smart", "fast", "immediate"] = "fast", timeout: float = 30.0) -> None:
        """`pg_ctl stop` (mode fast: disconnect clients, clean shutdown); SIGKILL if that fails."""
        if self.running:
            argv = [self.binaries["pg_ctl"], "-D", str(self.datadir), "-m", mode, "-t", str(int(timeout)), "-w", "stop"]
            try:
                self._run(argv, "pg_ctl.log", timeout=timeout + 10)
            except ServerError:
                self._kill_postmaster()
        _untrack(self)

    def _postmaster_pid(self) -> int | None:
        try:
            return int((self.datadir / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _kill_postmaster(self) -> None:
        pid = self._postmaster_pid()
        if pid is None:
            return
        # Killing the postmaster's whole process group also takes its backends with it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and _pid_alive(pid):
            time.sleep(0.02)
        with contextlib.suppress(OSError):
            (self.datadir / "postmaster.pid").unlink()

    # Databases ----------------------------------------------------------------------------------------------

    def url(self, dbname: str = "postgres") -> str:
        return f"postgres://{self.superuser}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, name: str) -> str:
        """Creates `name` and returns its URL."""
        common = ["-h", "127.0.0.1", "-p", str(self.port), "-U", self.superuser]
        if self.binaries.has("createdb"):
            argv = [self.binaries["createdb"], *common, name]
        else:
            quoted = '"' + name.replace('"', '""') + '"'
            argv = [
                self.binaries["psql"],
                *common,
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                "postgres",
                "-c",
                f"CREATE DATABASE {quoted}",
            ]
        self._run(argv, "createdb.log", as_server=False)
        return self.url(name)

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        """Runs SQL with the cluster's own psql and returns its unaligned, tuples-only output."""
        argv = [
            self.binaries["psql"],
            "-h", "127.0.0.1", "-p", str(self.port), "-U", self.superuser, "-d", dbname,
            "-v", "ON_ERROR_STOP=1", "-X", "-A", "-t", "-c", sql,
        ]  # fmt: skip
        result = subprocess.run(argv, env=_pg_env(), capture_output=True, text=True, timeout=60, check=False)
        if result.returncode != 0:
            raise ServerError(f"psql failed ({result.returncode}): {result.stderr.strip()}")
        return result.stdout.strip()

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.log_path, lines)

    def close(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self._watchdog.cancel()

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PostgresCluster(port={self.port}, running={self.running}, workdir={str(self.workdir)!r})"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
