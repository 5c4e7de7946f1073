from __future__ import annotations

from typing import Any

from app.api.schemas import CamelModel
from app.job_types.service import JobTypeInfo


class JobTypeOut(CamelModel):
    name: str
    description: str
    payload_schema: dict[str, Any]

    @classmethod
    def of(cls, info: JobTypeInfo) -> JobTypeOut:
        return cls(name=info.name, description=info.description, payload_schema=info.payload_schema)
