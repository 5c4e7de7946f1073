"""The README's tables say what the code does: the job object's fields, the log entry's, the metrics."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from app.jobs.schemas import JobOut
from app.runs.schemas import RunOut

pytestmark = pytest.mark.sqlite_only  # the README and the code alone

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def _wire_names(model: type[JobOut] | type[RunOut]) -> list[str]:
    return [field.alias or name for name, field in model.model_fields.items()]


def _table(heading: str) -> list[list[str]]:
    """The rows of the first table after `heading`, as cells."""
    section = README[README.index(heading) :]
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    first = section.index(rows[0])
    table = []
    for line in section[first:].splitlines():
        if not line.startswith("|"):
            break
        table.append([cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]])
    return table[2:]


def test_the_job_object_and_log_entry_fields_are_listed_in_order() -> None:
    text = " ".join(README.split())
    job = ", ".join(_wire_names(JobOut))
    assert (
        f"spec's order (`{', '.join(_wire_names(JobOut)[:10])}`) followed by `{job.split('lastDuration, ')[1]}`" in text
    )
    run = _wire_names(RunOut)
    assert f"(`{', '.join(run[:8])}`) followed by `{', '.join(run[8:])}`" in text


def test_every_run_lifecycle_field_has_a_row() -> None:
    fields = [row[0].strip("`") for row in _table("## Run lifecycle")]
    names = _wire_names(JobOut)
    assert fields == names[names.index("builtin") + 1 : names.index("lastSkippedFire") + 1]


def test_every_metric_is_in_the_metrics_table() -> None:
    listed = {name.strip("` ") for row in _table("Metrics (all prefixed") for name in row[0].split(",")}
    ours = {
        metric.name.removeprefix("jobs_gateway_")
        for metric in REGISTRY.collect()
        if metric.name.startswith("jobs_gateway_")
    }
    counters = {m + "_total" for m in ours if m + "_total" in listed}
    assert (ours - {c.removesuffix("_total") for c in counters}) | counters == listed
