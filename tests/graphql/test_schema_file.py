from pathlib import Path

import pytest

from app.schema_export import sdl

pytestmark = pytest.mark.sqlite_only  # the SDL is built from the code alone

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "schema.graphql"


def test_checked_in_sdl_matches_the_live_schema() -> None:
    assert SCHEMA_FILE.read_text() == sdl(), "schema.graphql is out of date: run `make schema`"


def test_the_issue_fixes_these_names() -> None:
    text = sdl()
    for line in [
        "jobs: [Job!]!",
        "job(id: ID!): Job",
        # Since, followed by a keyset cursor and filters: every query of the original shape still works.
        "jobLogs(jobId: ID!, limit: Int = 50, offset: Int = 0, before: Int",
        "allJobLogs(limit: Int = 100, offset: Int = 0, before: Int",
        # Since: `enabled` optional (updateJob also edits with `input`), and each mutation answers a union of its
        # success type and its expected outcomes (app.api.graphql_outcomes).
        "updateJob(id: ID!, enabled: Boolean = null, input: UpdateJobInput = null, expectedVersion: Int = null): "
        "UpdateJobResult!",
        "union UpdateJobResult = Job | JobNotFound | ValidationFailed | PermissionDenied | VersionConflict",
        "startJob(id: ID!)",
        "stopJob(id: ID!)",
        "triggerJob(id: ID!",  # and, since, an optional payload
        "jobStatus(id: ID = null): Job!",
    ]:
        assert line in text, line


def test_the_run_lifecycle_is_in_the_sdl() -> None:
    text = SCHEMA_FILE.read_text()
    for line in [
        "retry: RetryPolicy",
        "overlap: String!",
        "catchUp: CatchUp!",
        "pauseAfterFailures: Int",
        "consecutiveFailures: Int!",
        "cancelling: Boolean!",
        "lastSkippedFire: SkippedFireRef",
        "skippedFires(limit: Int = 50, offset: Int = 0, before: Int = null): SkippedFiresResult!",
        "union SkippedFiresResult = SkippedFirePage | ValidationFailed",
        "cancelJobRun(id: ID!): CancelJobRunResult!",
        "union CancelJobRunResult = JobActionResult | JobNotFound | ValidationFailed | PermissionDenied | NotRunning",
        "retry: RetryPolicyInput",
        "catchUp: CatchUpInput",
        "attempt: Int!",
        "fireAt: String",
    ]:
        assert line in text, line
