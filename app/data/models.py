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
