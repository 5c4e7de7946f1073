"""`jobs-gateway`: development tokens, migrations, and `run` (what `make run` calls)."""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

from pydantic import ValidationError

from app import db
from app.auth import ADMIN_PERMISSION, issue_token
from app.config import Settings, get_settings
from app.jobs.schedule import ScheduleError, parse_go_duration

ROOT = Path(__file__).resolve().parent.parent


def _settings() -> Settings:
    try:
        return get_settings()
    except ValidationError as exc:
        sys.exit(f"jobs-gateway: configuration error:\n{exc}")


def _ttl(text: str) -> timedelta:
    try:
        return parse_go_duration(text)
    except ScheduleError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def cmd_token(args: argparse.Namespace) -> None:
    permissions = args.permission or [ADMIN_PERMISSION]
    print(issue_token(_settings(), sub=args.sub, permissions=permissions, ttl=args.ttl))


def cmd_migrate(_: argparse.Namespace) -> None:
    settings = _settings()
    asyncio.run(db.migrate(settings))
    print(f"migrations applied to {settings.database_url}")


def cmd_run(_: argparse.Namespace) -> None:
    """Make sure Redis answers, migrate, print a token and the URLs, then serve in the foreground."""
    import uvicorn

    settings = _settings()
    env = {**os.environ, "REDIS_URL": settings.redis_url}
    data_dir = (settings.sqlite_path() or Path("data/x")).parent
    subprocess.run([str(ROOT / "scripts/ensure-redis.sh"), str(data_dir)], env=env, check=True)
    asyncio.run(db.migrate(settings))
    token = issue_token(settings, sub="1", permissions=[ADMIN_PERMISSION], ttl=timedelta(days=1))
    base = f"http://{settings.host}:{settings.port}"
    print(
        f"\njobs-gateway on {base}  (embedded worker: {settings.embedded_worker})\n"
        f"  REST:    {base}/api/jobs\n  Docs:    {base}/docs\n  GraphQL: {base}/graphql\n"
        f"  Token (sub 1, {ADMIN_PERMISSION}, 24h):\n    {token}\n"
        f'  Try:     curl -H "Authorization: Bearer $TOKEN" {base}/api/jobs\n',
        flush=True,
    )
    uvicorn.run("app.main:app", host=settings.host, port=settings.port, log_level=settings.log_level.lower())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="jobs-gateway")
    sub = parser.add_subparsers(dest="command", required=True)
    token = sub.add_parser("token", help="print a bearer token signed with the configured key")
    token.add_argument("--sub", required=True, help="user id (the token's sub claim)")
    token.add_argument("--permission", action="append", help=f"repeatable; default {ADMIN_PERMISSION}")
    token.add_argument("--ttl", type=_ttl, default=timedelta(hours=1), help="Go duration, default 1h")
    token.set_defaults(func=cmd_token)
    sub.add_parser("migrate", help="apply pending database migrations").set_defaults(func=cmd_migrate)
    sub.add_parser("run", help="ensure Redis, migrate and serve (make run)").set_defaults(func=cmd_run)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
