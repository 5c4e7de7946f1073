"""Pydantic validation errors in the vocabulary of the API's `details`."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from app.platform.errors import Invalid

M = TypeVar("M", bound=BaseModel)


def field_details(error: ValidationError, prefix: str = "") -> list[dict[str, Any]]:
    return [
        {"field": prefix + ".".join(str(p) for p in e["loc"]), "message": e["msg"], "type": e["type"]}
        for e in error.errors()
    ]


def validated(model: type[M], data: object, *, what: str, prefix: str = "") -> M:
    """`model` validated from `data`, or Invalid naming every failing field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        details = field_details(exc, prefix)
        summary = "; ".join(f"{d['field'] or 'body'}: {d['message']}" for d in details)
        raise Invalid(f"Invalid {what}: {summary}", details=details) from exc
