"""What a dashboard needs to draw a creation form for each registered job type."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.job_types import registry


@dataclass(frozen=True)
class JobTypeInfo:
    name: str
    description: str
    payload_schema: dict[str, Any]


def list_types() -> list[JobTypeInfo]:
    return [
        JobTypeInfo(
            name=t.name,
            description=t.description,
            payload_schema=t.payload_model.model_json_schema(by_alias=True),
        )
        for t in registry.all_types()
    ]
