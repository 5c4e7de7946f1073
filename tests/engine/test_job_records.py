"""arq's job records are JSON: a record planted in Redis by someone who can write there runs no code."""

from __future__ import annotations

import asyncio
import json
import pickle
import time
from pathlib import Path
from typing import Any

import pytest
from arq.constants import default_queue_name, job_key_prefix

from app.platform.config import Settings
from app.platform.redis_pool import job_deserializer, job_serializer
from tests.conftest import running_app

pytestmark = pytest.mark.sqlite_only  # Redis and arq only


class _Planted:
    """Unpickling it opens (creates) a file: the least of what a pickle can be made to do."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


async def test_a_pickled_job_record_planted_in_redis_runs_no_code(settings: Settings, tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    async with running_app(settings) as (app, _):
        redis = app.state.runtime.redis
        record = {
            "t": 1,
            "f": "fire_job",
            "a": ["metadata-sync", _Planted(marker)],
            "k": {},
            "et": int(time.time() * 1000),
        }
        await redis.set(job_key_prefix + "planted", pickle.dumps(record))
        await redis.zadd(default_queue_name, {"planted": int(time.time() * 1000)})
        await redis.publish(default_queue_name + ":wake", "0")  # as an enqueue would: the worker looks now
        deadline = time.monotonic() + 10
        while await redis.zscore(default_queue_name, "planted") is not None:
            assert time.monotonic() < deadline, "the worker never took the planted job"
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
    assert not marker.exists()


def test_records_round_trip_as_json_and_anything_else_is_refused() -> None:
    record = {"t": 1, "f": "start_later", "a": ["job", "tok", "user:1", None, 2, {"k": [1, "x"]}], "k": {}, "et": 5}
    data = job_serializer(record)
    assert json.loads(data) == record and job_deserializer(data) == record
    for bad in (pickle.dumps({"f": _Planted(Path("/nonexistent/x"))}), b"[1, 2]", b"\x80\x04not json", b"{"):
        with pytest.raises(ValueError):
            job_deserializer(bad)


def test_a_record_pickled_by_an_earlier_release_is_read_as_plain_values() -> None:
    """A fire or retry queued before the upgrade to JSON records still runs: its pickle holds plain values only."""
    record = {"t": 1, "f": "start_later", "a": ("job", "tok", "user:1", None, 2, {"k": [1]}), "k": {}, "et": 5}
    assert job_deserializer(pickle.dumps(record)) == record
    with pytest.raises(ValueError, match="refused"):
        job_deserializer(pickle.dumps({**record, "a": (_Planted(Path("/nonexistent/x")),)}))
