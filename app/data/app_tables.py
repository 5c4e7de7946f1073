"""Tables of the application that the built-in jobs maintain."""

from __future__ import annotations

from tortoise import fields
from tortoise.models import Model


class RefreshToken(Model):
    id = fields.BigIntField(primary_key=True)
    user_id = fields.CharField(max_length=64)
    token_hash = fields.CharField(max_length=128, unique=True)
    expires_at = fields.DatetimeField(db_index=True)
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "refresh_token"


class Game(Model):
    """A game's metadata, upserted by `metadata-sync` from the catalogue, keyed by the source's id."""

    id = fields.BigIntField(primary_key=True)
    external_id = fields.CharField(max_length=100, unique=True)
    title = fields.CharField(max_length=300)
    platform = fields.CharField(max_length=100, null=True)
    release_year = fields.IntField(null=True)
    data: fields.Field[dict[str, object]] = fields.JSONField(default=dict)
    synced_at = fields.DatetimeField()

    class Meta:
        table = "game"


class StoredFile(Model):
    """A file under FILES_DIR that something still references. Anything else there is an orphan."""

    id = fields.BigIntField(primary_key=True)
    path = fields.CharField(max_length=500, unique=True)  # relative to FILES_DIR
    game_id = fields.BigIntField(null=True)
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "stored_file"


class Listing(Model):
    """A listing in the marketplace. `cleanup_expired_listings` deletes old ones by created_at.

    Both timestamps are written by the application, never by the database, so that imports keep
    their original dates. `update_search_index` reindexes a listing whose updated_at is newer than
    its search entry.
    """

    id = fields.BigIntField(primary_key=True)
    title = fields.CharField(max_length=300)
    description = fields.TextField(default="")
    price = fields.IntField(null=True)  # in the smallest currency unit
    created_at = fields.DatetimeField(db_index=True)
    updated_at = fields.DatetimeField()

    class Meta:
        table = "listing"


class Notification(Model):
    """An outbox message: pending while sent_at is null. `send_notifications` delivers it.

    attempts counts failed deliveries.
    """

    id = fields.BigIntField(primary_key=True)
    recipient = fields.CharField(max_length=320)
    subject = fields.CharField(max_length=300)
    body = fields.TextField()
    created_at = fields.DatetimeField(auto_now_add=True)
    sent_at = fields.DatetimeField(null=True)
    attempts = fields.IntField(default=0)

    class Meta:
        table = "notification"
        indexes = (("sent_at", "id"),)


class SearchIndexEntry(Model):
    """The searchable text of one listing, maintained by `update_search_index`.

    body is the listing's title and description, lowercased with whitespace collapsed. indexed_at
    is when the indexing run that wrote the entry started.
    """

    id = fields.BigIntField(primary_key=True)
    listing_id = fields.BigIntField(unique=True)
    title = fields.CharField(max_length=300)
    body = fields.TextField()
    indexed_at = fields.DatetimeField()

    class Meta:
        table = "search_index_entry"
