"""`update_search_index`: keeps one search entry per listing.

Listings are walked in id order, CHUNK at a time, and each chunk's entries are replaced in one
transaction, so that searches never see a half-built index and no transaction holds the database for
the whole run. A full reindex rewrites every entry, an incremental one only those of listings changed
since (updated_at > indexed_at) or never indexed. Both then drop entries whose listing is gone.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import ConfigDict, Field
from tortoise.expressions import Subquery
from tortoise.transactions import in_transaction

from app.data.app_tables import Listing, SearchIndexEntry
from app.job_types.registry import Payload, RunContext, job_type
from app.platform.timefmt import utcnow

CHUNK = 500


class UpdateSearchIndexPayload(Payload):
    model_config = ConfigDict(populate_by_name=True)

    full_reindex: bool = Field(
        default=False, alias="fullReindex", description="Rebuild every entry instead of only the changed ones"
    )


def normalise(title: str, description: str) -> str:
    """The searchable text: title and description, lowercased, whitespace collapsed."""
    return " ".join(f"{title} {description}".split()).lower()


async def _stale(listings: list[Listing]) -> list[Listing]:
    """The listings without an entry, or changed since their entry was written."""
    indexed = dict(
        await SearchIndexEntry.filter(listing_id__in=[x.id for x in listings]).values_list("listing_id", "indexed_at")
    )
    return [x for x in listings if x.id not in indexed or x.updated_at > indexed[x.id]]


async def _reindex(listings: list[Listing], indexed_at: datetime) -> None:
    entries = [
        SearchIndexEntry(listing_id=x.id, title=x.title, body=normalise(x.title, x.description), indexed_at=indexed_at)
        for x in listings
    ]
    async with in_transaction() as conn:
        await SearchIndexEntry.filter(listing_id__in=[x.id for x in listings]).using_db(conn).delete()
        await SearchIndexEntry.bulk_create(entries, using_db=conn)


@job_type(
    "update_search_index",
    "Updates the listings' search index: changed listings only, or everything with `fullReindex`",
    UpdateSearchIndexPayload,
)
async def update_search_index(ctx: RunContext) -> dict[str, Any]:
    payload: UpdateSearchIndexPayload = ctx.payload
    # The run's start, not each write's time: a listing changed while this run reads it is newer than
    # this and so is picked up by the next run.
    started = utcnow()
    indexed = 0
    last_id = 0
    while True:
        listings = await Listing.filter(id__gt=last_id).order_by("id").limit(CHUNK)
        if not listings:
            break
        last_id = listings[-1].id
        todo = listings if payload.full_reindex else await _stale(listings)
        if todo:
            await _reindex(todo, started)
            indexed += len(todo)
        ctx.progress(indexed, note=f"listings indexed, up to id {last_id}")
        if len(listings) < CHUNK:
            break
    removed = await SearchIndexEntry.filter(listing_id__not_in=Subquery(Listing.all().values("id"))).delete()
    mode = "full" if payload.full_reindex else "incremental"
    ctx.log.info("indexed %d listings, removed %d entries of deleted listings", indexed, removed, mode=mode)
    return {
        "summary": f"Indexed {indexed} listings ({mode}), removed {removed}",
        "indexed": indexed,
        "removed": removed,
    }
