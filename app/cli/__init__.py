"""`jobs-gateway`: tokens, migrations, `run` (what `make run` calls), a standalone `worker`, and `jobs …`,
which drives a running API (list, trigger, logs --follow) so that a terminal can do what the dashboard does."""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import traceback
from datetime import timedelta
from pathlib import Path
from typing import NoReturn

from pydantic import ValidationError
from redis.exceptions import RedisError

from app import engine
from app.api.auth import ADMIN_PERMISSION, issue_token
from app.api.server import uvicorn_options
from app.cli import client as cli_client
from app.platform import db
from app.platform.config import Settings, get_settings, redacted
from app.platform.logs import configure_logging
from app.platform.schedule import ScheduleError, parse_go_duration

ROOT = Path(__file__).resolve().parents[2]  # the checkout: app/cli/__init__.py


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
    print(f"migrations applied to {redacted(settings.database_url)}")


def cmd_run(_: argparse.Namespace) -> None:
    """Make sure Redis answers, migrate, print a token and the URLs, then serve in the foreground."""
    settings = _settings()
    env = {**os.environ, "REDIS_URL": settings.redis_url}
    data_dir = (settings.sqlite_path() or Path("data/x")).parent
    subprocess.run([str(ROOT / "scripts/ensure-redis.sh"), str(data_dir)], env=env, check=True)
    asyncio.run(db.migrate(settings))
    token = issue_token(settings, sub="1", permissions=[ADMIN_PERMISSION], ttl=timedelta(days=1))
    base = f"http://{settings.host}:{settings.port}"
    print(
        f"\njobs-gateway on {base}  (embedded worker: {settings.embedded_worker})\n"
        f"  Dashboard: {base}/dashboard\n"
        f"  REST:    {base}/api/jobs\n  Docs:    {base}/docs\n  GraphQL: {base}/graphql\n"
        f"  Token (sub 1, {ADMIN_PERMISSION}, 24h):\n    {token}\n"
        f'  Try:     curl -H "Authorization: Bearer $TOKEN" {base}/api/jobs\n',
        flush=True,
    )
    _serve(settings)


def cmd_serve(_: argparse.Namespace) -> None:
    """An API instance as production runs it: the server's limits from the settings, nothing else started."""
    _serve(_settings())


def _serve(settings: Settings) -> None:
    import uvicorn

    configure_logging(settings)  # uvicorn's own lines too, from the first one (log_config=None keeps ours)
    uvicorn.run("app.main:app", **uvicorn_options(settings))


def cmd_worker(_: argparse.Namespace) -> None:
    """A standalone worker (EMBEDDED_WORKER=false on the API, or more workers), woken on new work.

    It rides out Redis restarts up to WORKER_REDIS_RETRY_SECONDS; past that it exits non-zero, so that
    its supervisor (systemd, Kubernetes) restarts it rather than leaving a worker that runs nothing."""
    from workers import settings as worker_definition

    try:
        engine.run_worker(_settings(), prepare=worker_definition.prepare)
    except db.SchemaBehind as exc:
        sys.exit(f"jobs-gateway worker: {exc}")
    except RedisError as exc:  # redis' ConnectionError and TimeoutError included
        _die(f"jobs-gateway worker: Redis unreachable for longer than WORKER_REDIS_RETRY_SECONDS ({exc}); exiting")
    except engine.MetricsPortUnavailable as exc:
        _die(f"jobs-gateway worker: {exc}; exiting")
    except Exception as exc:
        traceback.print_exc()
        _die(f"jobs-gateway worker: {type(exc).__name__}: {exc}; exiting")


def _die(message: str) -> NoReturn:
    print(message, file=sys.stderr, flush=True)
    # arq's shutdown hook never ran (its close() needs Redis, or start-up failed half-way): the database
    # client's thread would keep a plain exit waiting forever. The process is done; the OS reclaims the rest.
    os._exit(1)


def _api(args: argparse.Namespace) -> cli_client.Api:
    return cli_client.Api(cli_client.resolve_url(args.url), cli_client.resolve_token(args.token_file))


def _drive(args: argparse.Namespace) -> None:
    """Run one `jobs …` command against the API; its errors end the process with exit status 1."""

    async def go() -> None:
        api = _api(args)
        try:
            await args.action(api, args)
        finally:
            await api.close()

    try:
        asyncio.run(go())
    except cli_client.CliError as exc:
        sys.exit(f"jobs-gateway: {exc}")
    except KeyboardInterrupt:
        sys.exit(130)


async def _jobs_list(api: cli_client.Api, args: argparse.Namespace) -> None:
    print(await cli_client.list_jobs(api, as_json=args.json))


async def _jobs_trigger(api: cli_client.Api, args: argparse.Namespace) -> None:
    print(await cli_client.trigger(api, args.job_id))


async def _jobs_logs(api: cli_client.Api, args: argparse.Namespace) -> None:
    seen = cli_client.Seen()
    for run in await cli_client.recent_runs(api, args.job_id, args.limit):
        print(cli_client.run_line(run), flush=True)
        seen.listing(run)
    if args.follow:
        print(
            f"following {args.job_id}: the running run's lines as they are written, each run as it finishes "
            "(Ctrl-C to stop)",
            file=sys.stderr,
            flush=True,
        )
        await cli_client.follow(api, args.job_id, seen, lambda line: print(line, flush=True))


async def _runs_show(api: cli_client.Api, args: argparse.Namespace) -> None:
    print(await cli_client.show_run(api, args.run_id, as_json=args.json))


def _add_jobs_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    common.add_argument("--url", help=f"the API's base URL (default ${cli_client.URL_ENV} or {cli_client.DEFAULT_URL})")
    common.add_argument(
        "--token-file",
        metavar="PATH",
        help=f"a file holding the bearer token (default ${cli_client.TOKEN_ENV}, else one signed with the configured "
        "JWT key); never the token itself on the command line, where `ps` shows it",
    )
    jobs = sub.add_parser("jobs", help="list, trigger and follow jobs on a running API")
    actions = jobs.add_subparsers(dest="action_name", required=True)
    listing = actions.add_parser("list", parents=[common], allow_abbrev=False, help="every job with its status")
    listing.add_argument("--json", action="store_true", help="print the API's JSON instead of a table")
    listing.set_defaults(func=_drive, action=_jobs_list)
    trigger = actions.add_parser("trigger", parents=[common], allow_abbrev=False, help="run a job now")
    trigger.add_argument("job_id", metavar="ID")
    trigger.set_defaults(func=_drive, action=_jobs_trigger)
    logs = actions.add_parser("logs", parents=[common], allow_abbrev=False, help="a job's latest runs, oldest first")
    logs.add_argument("job_id", metavar="ID")
    logs.add_argument("--limit", type=int, default=20, help="how many past runs to print (default 20, max 100)")
    logs.add_argument(
        "--follow", "-f", action="store_true", help="then print the running run's lines, and each run as it finishes"
    )
    logs.set_defaults(func=_drive, action=_jobs_logs)
    runs = sub.add_parser("runs", help="look at one run on a running API")
    run_actions = runs.add_subparsers(dest="action_name", required=True)
    # No abbreviations (allow_abbrev=False): a token given as `--token <it>` must not pass for `--token-file`.
    show = run_actions.add_parser(
        "show", parents=[common], allow_abbrev=False, help="a run with its output, progress, traceback and log lines"
    )
    show.add_argument("run_id", metavar="RUN_ID")
    show.add_argument("--json", action="store_true", help="print the API's JSON (the run, with `log`: its lines)")
    show.set_defaults(func=_drive, action=_runs_show)


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
    sub.add_parser("serve", help="serve the API (an instance in production)").set_defaults(func=cmd_serve)
    sub.add_parser("worker", help="run a standalone worker (woken on new work)").set_defaults(func=cmd_worker)
    _add_jobs_commands(sub)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        # Named, never shown: what follows an unknown option may be a secret (`--token <the token>`).
        options = sorted({u.split("=", 1)[0] for u in unknown if u.startswith("-")}) or ["(a value)"]
        parser.error(f"unrecognized arguments: {' '.join(options)} (values not shown)")
    args.func(args)


if __name__ == "__main__":
    main()
