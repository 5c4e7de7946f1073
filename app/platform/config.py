"""One settings object, built explicitly and passed in; nothing reads the environment at import."""

from __future__ import annotations

import secrets
import warnings
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit, urlunsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MIN_SECRET_BYTES = 32
# An HMAC key shorter than its hash's output weakens it (RFC 7518 3.2): HS384 needs 48 bytes, HS512 64.
SECRET_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
MAX_LEEWAY_SECONDS = 300
PLACEHOLDER_SECRETS = {"changethis", "secret", "change-me", "changeme"}
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class ConfigError(ValueError):
    """The configuration cannot run a service; the message says what to set."""


class Settings(BaseSettings):
    # hide_input_in_errors: a refused setting's error must not print the input, which holds secrets and passwords.
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", hide_input_in_errors=True
    )

    app_env: Literal["development", "test", "production"] = "production"
    # Kept out of reprs (they may hold passwords); every output names them through `redacted`.
    database_url: str = Field(default="sqlite://data/jobs-gateway.sqlite3", repr=False)
    redis_url: str = Field(default="redis://127.0.0.1:6379/0", repr=False)
    # Connections each process's Redis pool may open, and how long a command waits for a free one
    # before it fails (503 `unavailable` in the API). The event subscription holds one for good; a
    # worker runs up to WORKER_MAX_JOBS handlers at once, each of which may be in a command.
    redis_pool_size: int = Field(default=200, ge=2)
    redis_pool_timeout_seconds: float = Field(default=2.0, gt=0)

    jwt_secret: SecretStr | None = None
    jwt_algorithm: Literal["HS256", "HS384", "HS512", "RS256", "ES256"] = "HS256"
    jwt_public_key: str | None = None
    jwt_private_key: SecretStr | None = None  # only for `jobs-gateway token` with RS256/ES256
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    jwt_leeway_seconds: int = Field(default=30, ge=0, le=MAX_LEEWAY_SECONDS)
    # Set when development made up a random JWT_SECRET: tokens signed with it verify in no other process.
    _throwaway_secret: bool = PrivateAttr(default=False)

    scheduler_timezone: str = "UTC"
    embedded_worker: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    log_level: str = "INFO"
    # auto: JSON lines when stderr is not a terminal (production, CI), coloured console lines when it is.
    log_format: Literal["auto", "json", "console"] = "auto"
    migrate_on_start: bool = False
    # Prometheus: the API serves /metrics; a standalone worker serves its own on this port (0: none).
    metrics_enabled: bool = True
    worker_metrics_port: int = Field(default=0, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"
    # Each /readyz dependency check (database, Redis) must answer within this.
    readiness_timeout_seconds: float = Field(default=1.0, gt=0, le=10)

    # Engine: a run's lease lives lease_ttl_seconds and is renewed every heartbeat_seconds.
    lease_ttl_seconds: float = Field(default=15.0, gt=0)
    heartbeat_seconds: float = Field(default=5.0, gt=0)
    # A queued run must be picked up within this, else its lease lapses and the run is dropped.
    queued_lease_ttl_seconds: float = Field(default=60.0, gt=0)
    job_timeout_seconds: float = Field(default=300.0, gt=0)
    misfire_grace_seconds: float = Field(default=300.0, ge=0)
    shutdown_grace_seconds: float = Field(default=10.0, ge=0)
    # Workers sleep until an enqueue wakes them (or a deferred job comes due); worker_poll_delay is their
    # poll interval only while that wake-up channel is down, worker_idle_poll_seconds the idle safety net.
    worker_poll_delay: float = Field(default=0.05, gt=0)
    worker_idle_poll_seconds: float = Field(default=1.0, gt=0, le=60)
    # An armed fire holds its worker slot from its arming (FIRE_LEAD_SECONDS ahead) to its handler's end:
    # a worker must hold every fire of a burst at once for them to start on their instant.
    worker_max_jobs: int = Field(default=100, ge=1)
    # Each fire is enqueued this long before its instant (at most half its schedule's interval): a worker
    # claims it during the lead, then the fires due on the same instant start together on it.
    fire_lead_seconds: float = Field(default=0.5, ge=0, le=60)
    worker_redis_retry_seconds: float = Field(default=30.0, ge=1)
    reconcile_interval_seconds: float = Field(default=30.0, gt=0)
    run_retention_days: int = Field(default=30, ge=1)
    # What a run says (app.engine.runlog): each run keeps its first RUN_LOG_MAX_LINES lines and RUN_LOG_MAX_BYTES
    # of them, then one line saying how much it dropped. Lines are written in batches, every
    # RUN_LOG_FLUSH_SECONDS while the run goes (live subscribers see them that much later, plus the write).
    run_log_max_lines: int = Field(default=1000, ge=1, le=100_000)
    run_log_max_bytes: int = Field(default=256 * 1024, ge=1024, le=64 * 1024 * 1024)
    run_log_flush_seconds: float = Field(default=0.05, gt=0, le=10)
    # Lines at this level or above also go to the process log; below it they are kept with the run only, where an
    # admin reads them (bench/NOTES.md says what a line costs either way).
    run_log_process_level: Literal["debug", "info", "warning", "error", "none"] = "warning"
    # The largest JSON object a handler may return as its run's output (a larger one fails the run, saying so).
    run_output_max_bytes: int = Field(default=64 * 1024, ge=1024, le=16 * 1024 * 1024)
    # `http_request` may only call these: "https://api.example.com", "http://127.0.0.1:8080" or a bare
    # host (any scheme, any port). Empty: nothing, until an admin allows it.
    http_request_allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # `send_notifications` hands each message to this callable ("module:function"); by default it
    # appends it to NOTIFICATIONS_LOG.
    notification_sender: str | None = None
    notifications_log: Path = Path("data/notifications.log")
    # Largest request body accepted (413 above it).
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    # What the API port tells a stranger about itself: GraphQL introspection, and the API explorers (/openapi.json,
    # /docs, /redoc, GraphiQL). Unset: on outside production, off in production.
    graphql_introspection: bool | None = None
    api_docs: bool | None = None
    # In production /metrics on the API port answers only a scraper sending this as its bearer token (unset: 404
    # there; outside production, unset leaves it open).
    metrics_token: SecretStr | None = None
    graphql_max_query_bytes: int = Field(default=20_000, ge=100)
    # A document's estimated cost (app.api.graphql_cost: lists multiply what they hold) above this is refused.
    graphql_max_cost: int = Field(default=20_000, ge=100)
    # Largest websocket message (a GraphQL subscribe with its variables) a client may send; a larger
    # one closes the socket with 1009.
    ws_max_message_bytes: int = Field(default=64 * 1024, ge=1024)
    # A websocket that has not sent `connection_init` within this is closed (4408), on both protocols.
    ws_init_timeout_seconds: float = Field(default=5.0, gt=0, le=300)
    # Per API process: websockets from one client address (before authentication) and of one token subject, and
    # subscriptions on one socket. Behind a reverse proxy every client has the proxy's address unless uvicorn is told
    # to trust its forwarded headers (FORWARDED_ALLOW_IPS).
    ws_max_sockets_per_address: int = Field(default=1000, ge=1)
    ws_max_sockets_per_subject: int = Field(default=1000, ge=1)
    ws_max_operations_per_socket: int = Field(default=100, ge=1)
    # The server (`jobs-gateway serve` and `run`): connections and tasks at once before new ones get 503, and how long
    # an idle keep-alive connection stays open.
    http_max_concurrency: int = Field(default=20_000, ge=10)
    http_keep_alive_seconds: int = Field(default=5, ge=1, le=300)
    # A request's headers must arrive whole within this of its first byte (or of the connection): a client trickling
    # them in would otherwise hold its connection for as long as it likes.
    http_header_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    # `metadata-sync` reads this JSON catalogue: an http(s) URL or a file path.
    metadata_source_url: str = str(Path(__file__).parents[1] / "data" / "sample_catalogue.json")
    # `cleanup-orphaned-files` deletes files here that no stored_file row references.
    files_dir: Path = Path("data/files")
    # Files younger than this are never orphans: they may be mid-upload.
    orphan_min_age_seconds: float = Field(default=3600.0, ge=0)
    # Extra modules that register job types, comma-separated in the environment.
    job_type_modules: Annotated[list[str], NoDecode] = Field(default_factory=list)

    @field_validator("scheduler_timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
            raise ValueError(f"unknown IANA time zone {value!r}") from exc
        return value

    @field_validator("job_type_modules", "http_request_allowed_hosts", mode="before")
    @classmethod
    def _split_modules(cls, value: object) -> object:
        if isinstance(value, str):
            return [m.strip() for m in value.split(",") if m.strip()]
        return value

    @field_validator("log_level")
    @classmethod
    def _upper_level(cls, value: str) -> str:
        level = value.upper()
        if level not in LOG_LEVELS:
            raise ValueError(f"LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}")
        return level

    @model_validator(mode="after")
    def _keys_present(self) -> Settings:
        if self.heartbeat_seconds >= self.lease_ttl_seconds:
            raise ValueError("HEARTBEAT_SECONDS must be shorter than LEASE_TTL_SECONDS")
        if self.jwt_algorithm.startswith("HS"):
            self._check_secret()
        elif not self.jwt_public_key:
            raise ConfigError(f"JWT_ALGORITHM={self.jwt_algorithm} needs JWT_PUBLIC_KEY (PEM).")
        return self

    def _check_secret(self) -> None:
        secret = None if self.jwt_secret is None else self.jwt_secret.get_secret_value()
        if secret is None and self.app_env != "production":
            # Development without a secret: tokens from another process will not verify,
            # which is safe; `make run` writes a persistent secret into .env instead.
            self.jwt_secret = SecretStr(secrets.token_urlsafe(48))
            self._throwaway_secret = True
            warnings.warn("JWT_SECRET is unset: using a random secret for this process", stacklevel=2)
            return
        if secret is None:
            raise ConfigError(
                "JWT_SECRET is not set. Set JWT_SECRET to a random string of at least "
                f"{MIN_SECRET_BYTES} bytes (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(48))'`), "
                "or APP_ENV=development for a throwaway secret."
            )
        needed = SECRET_BYTES.get(self.jwt_algorithm, MIN_SECRET_BYTES)
        if len(secret.encode()) < needed or secret.lower() in PLACEHOLDER_SECRETS:
            raise ConfigError(
                f"JWT_SECRET must be a random string of at least {needed} bytes for {self.jwt_algorithm} "
                "(the size of its hash)."
            )

    @property
    def introspection_on(self) -> bool:
        return self.graphql_introspection if self.graphql_introspection is not None else self.app_env != "production"

    @property
    def api_docs_on(self) -> bool:
        return self.api_docs if self.api_docs is not None else self.app_env != "production"

    @property
    def throwaway_secret(self) -> bool:
        """JWT_SECRET was unset in development and this process made one up."""
        return self._throwaway_secret

    @cached_property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.scheduler_timezone)

    def sqlite_path(self) -> Path | None:
        """The file behind a SQLite DATABASE_URL, so that its folder can be created."""
        prefix = "sqlite://"
        if not self.database_url.startswith(prefix):
            return None
        rest = self.database_url[len(prefix) :]
        return None if rest.startswith(":memory:") else Path(rest)


def redacted(url: str) -> str:
    """A database or Redis URL as it may be shown: without its password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = f"{parts.username}:" if parts.username else ":"
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{user}***@{host}"))


def get_settings(**overrides: object) -> Settings:
    """Read settings from the environment and `.env`; overrides win (tests pass them)."""
    return Settings(**overrides)  # type: ignore[arg-type]
