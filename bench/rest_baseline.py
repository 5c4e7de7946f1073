"""B3's baseline: a bare FastAPI app serving the same 20-job JSON through `response_model`, behind the same
JWT dependency as jobs-gateway (`app.api.deps.may`), with no database, Redis or middleware.

    BENCH_JOBS_JSON=jobs.json JWT_SECRET=... uvicorn bench.rest_baseline:app --host 127.0.0.1 --port PORT
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Any

from fastapi import FastAPI

from app.api.auth import Principal
from app.api.deps import may
from app.jobs.schemas import JobOut
from app.platform.config import get_settings


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.runtime = SimpleNamespace(settings=get_settings())  # what the JWT dependency reads
    app.state.jobs = json.loads(Path(os.environ["BENCH_JOBS_JSON"]).read_text())
    yield


app = FastAPI(lifespan=lifespan)


@app.get("/api/jobs", response_model=list[JobOut])
async def list_jobs(_: Annotated[Principal, may("jobs")]) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = app.state.jobs
    return jobs
