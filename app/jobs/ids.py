"""The job id rule, shared by every lookup and filter."""

from __future__ import annotations

import re

from app.platform.errors import Invalid

JOB_ID_PATTERN = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
JOB_ID_MAX = 64


def validate_job_id(job_id: str) -> str:
    if len(job_id) > JOB_ID_MAX or not JOB_ID_PATTERN.fullmatch(job_id):
        raise Invalid(
            "Invalid job ID format: use lowercase letters and digits in words joined by single hyphens, "
            f"at most {JOB_ID_MAX} characters",
            code="invalid_job_id",
        )
    return job_id
