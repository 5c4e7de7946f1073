"""GraphQL for the job-type registry."""

from __future__ import annotations

import strawberry
from strawberry.scalars import JSON

from app.job_types import service as job_types_service


@strawberry.type(name="JobTypeInfo")
class JobTypeInfoType:
    name: str
    description: str
    payload_schema: JSON = strawberry.field(description="JSON Schema of the payload, for drawing a form.")


@strawberry.type
class JobTypeQuery:
    @strawberry.field(description="Every registered job type.")
    def job_types(self) -> list[JobTypeInfoType]:
        return [
            JobTypeInfoType(name=t.name, description=t.description, payload_schema=JSON(t.payload_schema))
            for t in job_types_service.list_types()
        ]
