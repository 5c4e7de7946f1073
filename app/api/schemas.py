"""Wire shapes every REST domain shares: camelCase models and the spec's action answer."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class CamelModel(BaseModel):
    """Snake-case fields in Python, the spec's camelCase names on the wire."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, serialize_by_alias=True)


class ActionResult(BaseModel):
    success: bool = True
    message: str
