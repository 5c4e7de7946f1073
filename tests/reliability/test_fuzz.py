"""Scenarios 11 and 12: schemathesis generates requests from our own OpenAPI document and GraphQL
schema, with a valid token and without one. No 5xx, responses as documented, no INTERNAL error."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.reliability.harness import Cluster, figure, running_cluster

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

EXAMPLES = 12  # per operation, generation mode and token: bounded, so the suite's time is too
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def cluster(module_workdir: Path, module_database_url: str) -> Iterator[Cluster]:
    with running_cluster(module_workdir, module_database_url, apis=1, workers=0) as c:
        yield c


def _explore(operation: Any, mode: GenerationMode, call: Callable[[Case], None]) -> None:
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,  # the same requests every run: a failure here is reproducible
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def explore(case: Case) -> None:
        call(case)

    explore()


def test_s11_openapi_fuzzing_with_and_without_a_token_finds_no_5xx_and_no_undocumented_response(
    cluster: Cluster,
) -> None:
    url = cluster.apis[0].url
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", timeout=10)
    failures: dict[str, set[str]] = {}
    statuses: Counter[int] = Counter()
    over_cost = [0]
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        for headers in (cluster.auth, {}):
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

                def call(case: Case, headers: dict[str, str] = headers) -> None:
                    response = case.call(base_url=url, headers=headers, timeout=10)
                    statuses[response.status_code] += 1
                    try:
                        case.validate_response(response, checks=CHECKS)
                    except Exception as exc:  # schemathesis raises a group of failures; keep their titles
                        label = f"{case.operation.label} [{'token' if headers else 'no token'}]"
                        failures.setdefault(label, set()).add(_first_line(exc, response.status_code))

                _explore(operation, mode, call)
    figure(
        "S11",
        operations=operations,
        requests=sum(statuses.values()),
        statuses=dict(sorted(statuses.items())),
        failing_operations=len(failures),
        refused_over_cost=over_cost[0],
    )
    for label, problems in sorted(failures.items()):
        print(f"  {label}: {sorted(problems)}")
    assert not any(status >= 500 for status in statuses), dict(statuses)
    assert failures == {}


def _first_line(exc: BaseException, status: int) -> str:
    text = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    # A schemathesis failure group says how many failures first; each failure's kind and message follow.
    kinds = [f"{line} {text[i + 1]}" for i, line in enumerate(text[:-1]) if line.startswith("- ST")]
    return f"{status}: {'; '.join(kinds) if kinds else (text[0] if text else type(exc).__name__)}"


def _check_with_token(
    case: Case, response: Any, body: dict[str, Any], failures: dict[str, set[str]], over_cost: list[int]
) -> None:
    """With a token, schemathesis's default checks: every schema-valid request is answered with data (expected
    failures are union members), never a top-level error, but for a document whose estimated cost is over
    GRAPHQL_MAX_COST (fuzzed limits reach millions): refused whole before anything runs."""
    if _over_cost(body):
        over_cost[0] += 1
        return
    try:
        case.validate_response(response)
    except (Exception, BaseExceptionGroup) as exc:  # a FailureGroup is a BaseExceptionGroup
        failures.setdefault(case.operation.label, set()).add(_first_line(exc, response.status_code))


def _over_cost(body: dict[str, Any]) -> bool:
    errors = body.get("errors")
    return (
        isinstance(errors, list)
        and len(errors) == 1
        and errors[0]["extensions"]["code"] == "BAD_USER_INPUT"
        and "more than GRAPHQL_MAX_COST" in errors[0]["message"]
        and body.get("data") is None
    )


def test_s12_graphql_fuzzing_finds_no_internal_error(cluster: Cluster) -> None:
    """Schemathesis's default checks with a token (zero failures: every expected failure is data, a member of
    the field's union, but for the one document-level refusal, GRAPHQL_MAX_COST's), only UNAUTHENTICATED without
    one, and never an INTERNAL error."""
    url = cluster.apis[0].url + "/graphql"
    schema = schemathesis.graphql.from_url(url, headers=cluster.auth, timeout=10)
    codes: Counter[str] = Counter()
    internal: list[str] = []
    failures: dict[str, set[str]] = {}
    statuses: Counter[int] = Counter()
    over_cost = [0]
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        for headers in (cluster.auth, {}):

            def call(case: Case, headers: dict[str, str] = headers) -> None:
                response = case.call(base_url=cluster.apis[0].url, headers=headers, timeout=10)
                statuses[response.status_code] += 1
                body = response.json()
                if headers:
                    _check_with_token(case, response, body, failures, over_cost)
                else:
                    # Without one, nothing runs: each answer is the coded UNAUTHENTICATED error (which those checks
                    # count as a server error, as they do any error of a resolver).
                    assert {e["extensions"]["code"] for e in body.get("errors") or []} == {"UNAUTHENTICATED"}, body
                for error in body.get("errors") or []:
                    code = (error.get("extensions") or {}).get("code", "none")
                    codes[code] += 1
                    if code in ("INTERNAL", "none"):
                        internal.append(f"{case.operation.label}: {error.get('message')} <- {case.body!r:.300}")

            _explore(operation, GenerationMode.POSITIVE, call)
    figure(
        "S12",
        operations=operations,
        requests=sum(statuses.values()),
        statuses=dict(statuses),
        codes=dict(codes),
        internal=len(internal),
        failing_operations=len(failures),
        refused_over_cost=over_cost[0],
    )
    for line in internal[:10]:
        print("  " + line)
    for label, problems in sorted(failures.items()):
        print(f"  {label}: {sorted(problems)}")
    assert not any(status >= 500 for status in statuses), dict(statuses)
    assert internal == []
    assert failures == {}
