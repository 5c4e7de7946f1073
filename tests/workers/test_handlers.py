"""The built-in job types do real work on the tables and files the service owns."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from app.data.app_tables import Game, RefreshToken, StoredFile
from app.data.runs import Run, RunLogLine
from app.data.skipped_fires import SkippedFire
from app.engine import RunLog
from app.job_types import registry
from app.job_types.registry import RunContext
from app.platform.runtime import Runtime
from app.platform.timefmt import utcnow
from workers.handlers import metadata_sync
from workers.handlers.cleanup_orphaned_files import _delete, _orphans

pytestmark = pytest.mark.postgres


# The run id these handlers' lines are written under: no real run has it.
HANDLER_TEST_RUN = 10**12


def context(rt: Runtime, **settings: object) -> RunContext:
    return RunContext(
        job_id="x",
        run_id=1,
        payload=registry.Payload(),
        settings=rt.settings.model_copy(update=settings),
        log=RunLog(rt, job_id="x", run_id=HANDLER_TEST_RUN),
    )


async def run(type_name: str, ctx: RunContext) -> str:
    """The run's details: the handler's string, or its output's summary. Its log is closed after it, as the runner
    does: its last lines are written while the test's database is still there."""
    try:
        result = await registry.get(type_name).handler(ctx)
    finally:
        await ctx.log.close()
    return result["summary"] if isinstance(result, dict) else result


async def test_cleanup_expired_tokens_deletes_only_expired_ones(orm: Runtime) -> None:
    now = utcnow()
    await RefreshToken.create(user_id="1", token_hash="old", expires_at=now - timedelta(minutes=1))
    await RefreshToken.create(user_id="1", token_hash="older", expires_at=now - timedelta(days=9))
    await RefreshToken.create(user_id="2", token_hash="fresh", expires_at=now + timedelta(hours=1))
    assert await run("cleanup_expired_tokens", context(orm)) == "Deleted 2 expired refresh tokens"
    assert await RefreshToken.all().values_list("token_hash", flat=True) == ["fresh"]


async def test_cleanup_job_logs_prunes_completed_runs_and_skipped_fires_past_retention(orm: Runtime) -> None:
    now = utcnow()
    old, recent = now - timedelta(days=31), now - timedelta(days=29)
    await Run.create(job_id="a", token="t1", triggered_by="user:1", started_at=old, completed_at=old, result="error")
    await Run.create(job_id="a", token="t2", triggered_by="scheduler", started_at=recent, completed_at=recent)
    await Run.create(job_id="a", token="t3", triggered_by="scheduler", started_at=old)  # still open: kept
    for at in (old, old + timedelta(minutes=1), recent):
        await SkippedFire.create(job_id="a", fire_at=at, last_fire_at=at, reason="overlap", recorded_at=at)
    ctx = context(orm, run_retention_days=30)
    output = await registry.get("cleanup_job_logs").handler(ctx)
    await ctx.log.close()
    assert output == {
        "summary": "Deleted 1 run logs and 2 skipped-fire records older than 30 days",
        "runsDeleted": 1,
        "skippedFiresDeleted": 2,
        "retentionDays": 30,
    }
    assert sorted(await Run.all().values_list("token", flat=True)) == ["t2", "t3"]
    assert await SkippedFire.all().values_list("recorded_at", flat=True) == [recent]


def test_a_folder_swapped_for_a_symlink_after_the_scan_sends_no_delete_outside(tmp_path: Path) -> None:
    """The scan finds files/covers/orphan.png; before the delete, covers/ becomes a link to a folder outside
    FILES_DIR holding a file of the same name. The delete must not follow it."""
    root, outside = tmp_path / "files", tmp_path / "precious"
    (root / "covers").mkdir(parents=True)
    outside.mkdir()
    (root / "covers" / "orphan.png").write_bytes(b"1234")
    (outside / "orphan.png").write_bytes(b"keep me")
    old = time.time() - 7200
    os.utime(root / "covers" / "orphan.png", (old, old))
    found = _orphans(root, set(), 3600)
    assert found == [root / "covers" / "orphan.png"]
    shutil.rmtree(root / "covers")
    (root / "covers").symlink_to(outside, target_is_directory=True)
    assert _delete(root, found) == (0, 0)
    assert (outside / "orphan.png").read_bytes() == b"keep me"
    # Without the swap the same call deletes it.
    (root / "covers").unlink()
    (root / "covers").mkdir()
    (root / "covers" / "orphan.png").write_bytes(b"1234")
    assert _delete(root, found) == (1, 4) and not (root / "covers" / "orphan.png").exists()


async def test_cleanup_orphaned_files_keeps_referenced_young_and_outside_files(orm: Runtime, tmp_path: Path) -> None:
    root = tmp_path / "files"
    (root / "covers").mkdir(parents=True)
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"keep me")
    files = {"covers/kept.png": b"12", "covers/orphan.png": b"1234", "orphan.txt": b"123", "young.txt": b"1"}
    for name, data in files.items():
        (root / name).write_bytes(data)
    old = time.time() - 7200
    for name in ("covers/kept.png", "covers/orphan.png", "orphan.txt"):
        os.utime(root / name, (old, old))
    (root / "link").symlink_to(outside)
    await StoredFile.create(path="covers/kept.png")
    summary = await run("cleanup_orphaned_files", context(orm, files_dir=root, orphan_min_age_seconds=3600))
    assert summary == "Deleted 2 orphaned files (7 bytes)"
    remaining = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() or p.is_symlink())
    assert remaining == ["covers/kept.png", "link", "young.txt"]
    assert outside.read_bytes() == b"keep me"


async def test_cleanup_orphaned_files_with_no_folder_deletes_nothing(orm: Runtime, tmp_path: Path) -> None:
    assert await run("cleanup_orphaned_files", context(orm, files_dir=tmp_path / "nope")) == (
        "Deleted 0 orphaned files (0 bytes)"
    )


async def test_metadata_sync_reports_its_counts_progress_and_lines(orm: Runtime) -> None:
    ctx = context(orm)
    await Game.create(external_id="g-1002", title="old title", synced_at=utcnow())
    output = await registry.get("metadata_sync").handler(ctx)
    assert output == {"summary": "Synced 5 games (4 new)", "fetched": 5, "created": 4, "updated": 1}
    await ctx.log.close()  # what the runner does once the handler has returned
    lines = await RunLogLine.filter(run_id=HANDLER_TEST_RUN).order_by("seq").values_list("message", "extra")
    assert lines == [
        ("fetching the catalogue", {"source": orm.settings.metadata_source_url}),
        ("fetched 5 games", {"games": 5}),
        ("upserted 5 games: 4 new, 1 updated", None),
    ]
    run = await Run.create(id=HANDLER_TEST_RUN, job_id="x", token="t", triggered_by="user:1", started_at=utcnow())
    ctx = context(orm)
    await registry.get("metadata_sync").handler(ctx)
    await ctx.log.close()
    await run.refresh_from_db()
    assert run.progress is not None
    assert (run.progress["done"], run.progress["total"], run.progress["note"]) == (5, 5, "games upserted")


async def test_metadata_sync_upserts_the_bundled_sample_catalogue(orm: Runtime) -> None:
    assert await run("metadata_sync", context(orm)) == "Synced 5 games (5 new)"
    assert await run("metadata_sync", context(orm)) == "Synced 5 games (0 new)"
    hades = await Game.get(external_id="g-1002")
    assert (hades.title, hades.platform, hades.release_year, hades.data) == (
        "Hades",
        "pc",
        2020,
        {"genres": ["roguelike", "action"]},
    )


@pytest.fixture
def catalogue_server() -> Iterator[tuple[str, dict[str, object]]]:
    """A loopback HTTP server serving whatever catalogue the test puts in the dict."""
    state: dict[str, object] = {"body": {"games": []}, "status": 200}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps(state["body"]).encode()
            self.send_response(int(str(state["status"])))
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/catalogue.json", state
    finally:
        server.shutdown()
        server.server_close()


async def test_metadata_sync_over_http_updates_changed_games(
    orm: Runtime, catalogue_server: tuple[str, dict[str, object]]
) -> None:
    url, state = catalogue_server
    state["body"] = {"games": [{"id": "a", "title": "Alpha"}, {"id": "b", "title": "Beta", "releaseYear": 2001}]}
    assert await run("metadata_sync", context(orm, metadata_source_url=url)) == "Synced 2 games (2 new)"
    state["body"] = {"games": [{"id": "a", "title": "Alpha Remastered"}]}
    assert await run("metadata_sync", context(orm, metadata_source_url=url)) == "Synced 1 games (0 new)"
    assert (await Game.get(external_id="a")).title == "Alpha Remastered"


async def test_metadata_sync_refuses_a_catalogue_over_its_size_cap_and_ignores_proxies(
    orm: Runtime, catalogue_server: tuple[str, dict[str, object]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    url, state = catalogue_server
    monkeypatch.setattr(metadata_sync, "MAX_CATALOGUE_BYTES", 10_000)
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # would refuse the connection, were it used
    state["body"] = {"games": [{"id": f"g{i}", "title": "x" * 100} for i in range(200)]}
    with pytest.raises(ValueError, match="larger than 10000 bytes"):
        await run("metadata_sync", context(orm, metadata_source_url=url))
    big = tmp_path / "catalogue.json"
    big.write_text(json.dumps(state["body"]))
    with pytest.raises(ValueError, match="larger than 10000 bytes"):
        await run("metadata_sync", context(orm, metadata_source_url=str(big)))
    state["body"] = {"games": [{"id": "a", "title": "Alpha"}]}
    assert await run("metadata_sync", context(orm, metadata_source_url=url)) == "Synced 1 games (1 new)"


async def test_metadata_sync_fails_clearly_on_a_bad_catalogue_or_http_error(
    orm: Runtime, catalogue_server: tuple[str, dict[str, object]]
) -> None:
    url, state = catalogue_server
    state["body"] = {"games": [{"title": "no id"}]}
    with pytest.raises(ValueError, match="catalogue is malformed"):
        await run("metadata_sync", context(orm, metadata_source_url=url))
    state["status"] = 503
    with pytest.raises(Exception, match="503"):
        await run("metadata_sync", context(orm, metadata_source_url=url))
    assert await Game.all().count() == 0
