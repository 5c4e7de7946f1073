"""/docs is usable: every operation lists its error responses with the error body, examples and the
bearer security scheme that gives Swagger UI its "Authorize" button."""

from __future__ import annotations

from typing import Any

import httpx

from app.api.outages import DATABASE_DOWN, REDIS_DOWN

# The errors each operation can answer besides 401 and 403 (which every authenticated one can).
EXPECTED_ERRORS = {
    ("get", "/api/jobs"): set(),
    ("post", "/api/jobs"): {400, 409, 413, 422},
    ("get", "/api/jobs/{jobId}"): {400, 404},
    ("patch", "/api/jobs/{jobId}"): {400, 404, 412, 413},
    ("delete", "/api/jobs/{jobId}"): {400, 404, 409},
    ("post", "/api/jobs/{jobId}/start"): {400, 404},
    ("post", "/api/jobs/{jobId}/stop"): {400, 404},
    ("post", "/api/jobs/{jobId}/trigger"): {400, 404, 409, 422, 503},
    ("get", "/api/jobs/{jobId}/logs"): {400, 404},
    ("post", "/api/jobs/{jobId}/cancel"): {400, 404, 409, 503},
    ("get", "/api/jobs/{jobId}/fires/skipped"): {400, 404},
    ("get", "/api/jobs/logs/all"): {400},
    ("get", "/api/activity"): {400},
    ("get", "/api/job-types"): set(),
    ("get", "/api/jobs/{jobId}/fires/next"): {400, 404},
    ("post", "/api/schedules/preview"): {400, 413},
    ("get", "/api/runs/{runId}"): {400, 404},
    ("get", "/api/runs/{runId}/log"): {400, 404},
}


async def openapi(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    spec: dict[str, Any] = response.json()
    return spec


def operations(spec: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(method, path): op for path, item in spec["paths"].items() for method, op in item.items()}


async def test_every_api_operation_documents_its_errors_security_and_examples(client: httpx.AsyncClient) -> None:
    spec = await openapi(client)
    ops = operations(spec)
    api_ops = {key for key in ops if key[1].startswith("/api/")}
    assert api_ops == set(EXPECTED_ERRORS), "a route was added or removed: list its errors here"
    scheme_name, scheme = next(iter(spec["components"]["securitySchemes"].items()))
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    for key in sorted(api_ops):
        op = ops[key]
        assert op["security"] == [{scheme_name: []}], key
        assert op.get("summary"), key
        statuses = {int(code) for code in op["responses"] if code[0] in "45"}
        assert statuses == {401, 403} | EXPECTED_ERRORS[key], key
        for code in statuses:
            response = op["responses"][str(code)]
            media = response["content"]["application/json"]
            assert media["schema"] == {"$ref": "#/components/schemas/ErrorBody"}, (key, code)
            assert media["example"]["success"] is False and media["example"]["error"], (key, code)
        success = next(code for code in op["responses"] if code.startswith("2"))
        if success != "204":
            assert "example" in op["responses"][success]["content"]["application/json"] or key == (
                "get",
                "/api/job-types",
            ), key
    error_body = spec["components"]["schemas"]["ErrorBody"]
    assert set(error_body["required"]) == {"error", "message"}


async def test_examples_come_from_the_jobs_api_reference(client: httpx.AsyncClient) -> None:
    ops = operations(await openapi(client))
    job = ops[("get", "/api/jobs/{jobId}")]["responses"]["200"]["content"]["application/json"]["example"]
    assert (job["id"], job["schedule"], job["lastDuration"]) == ("metadata-sync", "0 */6 * * *", 45230)
    logs = ops[("get", "/api/jobs/{jobId}/logs")]["responses"]["200"]["content"]["application/json"]["example"]
    assert logs["logs"][0]["details"] == "Synced 150 games" and logs["total"] == 45
    patch = ops[("patch", "/api/jobs/{jobId}")]["requestBody"]["content"]["application/json"]
    assert patch["examples"]["enable"]["value"] == {"enabled": True}


async def test_operations_endpoints_stay_out_of_the_api_document(client: httpx.AsyncClient) -> None:
    paths = (await openapi(client))["paths"]
    for path in ("/healthz", "/readyz", "/metrics"):
        assert path not in paths
        assert (await client.get(path)).status_code == 200  # and need no credentials
    assert (await client.get("/docs")).status_code == 200


async def test_the_503_example_is_the_message_an_outage_really_answers(client: httpx.AsyncClient) -> None:
    response = operations(await openapi(client))[("post", "/api/jobs/{jobId}/trigger")]["responses"]["503"]
    assert response["content"]["application/json"]["example"]["message"] == REDIS_DOWN
    assert DATABASE_DOWN in response["description"]
