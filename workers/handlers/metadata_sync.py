from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.data.app_tables import Game
from app.job_types.registry import RunContext, job_type
from app.platform.timefmt import utcnow


class CatalogueGame(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    id: str = Field(min_length=1, max_length=100)
    title: str = Field(min_length=1, max_length=300)
    platform: str | None = None
    release_year: int | None = Field(default=None, alias="releaseYear")


class Catalogue(BaseModel):
    games: list[CatalogueGame]


# The catalogue is read whole into memory: a source larger than this is refused rather than read.
MAX_CATALOGUE_BYTES = 32 * 1024 * 1024
FETCH_TIMEOUT_SECONDS = 30.0


async def _fetch(source: str) -> Any:
    if source.startswith(("http://", "https://")):
        # Proxy variables of the environment are ignored (its CA settings are not): the catalogue comes from where the
        # setting says.
        async with (
            asyncio.timeout(FETCH_TIMEOUT_SECONDS),
            httpx.AsyncClient(
                timeout=FETCH_TIMEOUT_SECONDS, trust_env=False, transport=httpx.AsyncHTTPTransport(trust_env=True)
            ) as client,
            client.stream("GET", source) as response,
        ):
            response.raise_for_status()
            data = bytearray()
            async for chunk in response.aiter_bytes():
                data += chunk
                if len(data) > MAX_CATALOGUE_BYTES:
                    raise ValueError(f"the catalogue at {source} is larger than {MAX_CATALOGUE_BYTES} bytes")
            return json.loads(bytes(data))
    path = Path(source)
    size = await asyncio.to_thread(lambda: path.stat().st_size)
    if size > MAX_CATALOGUE_BYTES:
        raise ValueError(f"the catalogue {source} is larger than {MAX_CATALOGUE_BYTES} bytes")
    text = await asyncio.to_thread(path.read_text, encoding="utf-8")
    return json.loads(text)


@job_type("metadata_sync", "Pulls the JSON game catalogue from METADATA_SOURCE_URL and upserts it")
async def metadata_sync(ctx: RunContext) -> dict[str, Any]:
    source = ctx.settings.metadata_source_url
    ctx.log.info("fetching the catalogue", source=source)
    try:
        catalogue = Catalogue.model_validate(await _fetch(source))
    except ValidationError as exc:
        raise ValueError(
            f"catalogue is malformed: {exc.error_count()} errors, first: {exc.errors()[0]['msg']}"
        ) from exc
    total = len(catalogue.games)
    ctx.log.info("fetched %d games", total, games=total)
    now = utcnow()
    created = 0
    for done, item in enumerate(catalogue.games, 1):
        extra = item.model_extra or {}
        _, was_created = await Game.update_or_create(
            defaults={
                "title": item.title,
                "platform": item.platform,
                "release_year": item.release_year,
                "data": extra,
                "synced_at": now,
            },
            external_id=item.id,
        )
        created += was_created
        ctx.progress(done, total, note="games upserted")
    ctx.log.info("upserted %d games: %d new, %d updated", total, created, total - created)
    return {
        "summary": f"Synced {total} games ({created} new)",
        "fetched": total,
        "created": created,
        "updated": total - created,
    }
