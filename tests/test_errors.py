"""Every error, whichever layer raises it (router, validation, auth, service), is the JSON error shape."""

from __future__ import annotations

import re

import httpx
import pytest
from fastapi import FastAPI

ERROR_KEYS = {"success", "error", "message"}


def assert_json_error(response: httpx.Response, status: int | None = None, code: str | None = None) -> None:
    assert 400 <= response.status_code < 600, (response.status_code, response.text)
    if status is not None:
        assert response.status_code == status, response.text
    content_type = response.headers.get("content-type", "")
    assert content_type.startswith("application/json"), (content_type, response.text)
    body = response.json()
    assert isinstance(body, dict) and ERROR_KEYS <= set(body) <= ERROR_KEYS | {"details"}, body
    assert body["success"] is False
    assert isinstance(body["error"], str) and body["error"], body
    assert isinstance(body["message"], str) and body["message"], body
    if code is not None:
        assert body["error"] == code, body


def api_routes(app: FastAPI) -> list[tuple[str, str]]:
    """(method, path template) of every REST route the app serves, as its OpenAPI document lists them."""
    paths: dict[str, dict[str, object]] = app.openapi()["paths"]
    return sorted(
        (method.upper(), path) for path, operations in paths.items() if path.startswith("/api") for method in operations
    )


def concrete(path: str, job_id: str = "metadata-sync") -> str:
    return re.sub(r"\{[^}]+\}", job_id, path)


# `/` redirects to the dashboard (tests/browser/test_headers.py).
@pytest.mark.parametrize("path", ["/api/nope", "/api/jobs/metadata-sync/nope", "/nope", "/dashboard/nope"])
async def test_unknown_path_is_json_404(client: httpx.AsyncClient, auth: dict[str, str], path: str) -> None:
    assert_json_error(await client.get(path, headers=auth), 404, "not_found")
    assert_json_error(await client.get(path), 404, "not_found")


async def test_wrong_method_is_json_405(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    response = await client.delete("/api/jobs/logs/all", headers=auth)
    assert_json_error(response, 405, "method_not_allowed")
    assert "GET" in response.headers.get("allow", "")


async def test_wrong_method_on_every_route_is_json_405(
    app_client: tuple[FastAPI, httpx.AsyncClient], auth: dict[str, str]
) -> None:
    app, client = app_client
    routes = api_routes(app)
    assert routes, "no REST routes found"
    served: dict[str, set[str]] = {}
    for method, path in routes:
        served.setdefault(concrete(path), set()).add(method)
    for path, methods in served.items():
        for method in {"GET", "POST", "PUT", "PATCH", "DELETE"} - methods:
            assert_json_error(await client.request(method, path, headers=auth), 405, "method_not_allowed")


async def test_every_route_without_token_is_json_401(app_client: tuple[FastAPI, httpx.AsyncClient]) -> None:
    app, client = app_client
    for method, path in api_routes(app):
        response = await client.request(method, concrete(path), json={"enabled": True})
        assert_json_error(response, 401)
        assert response.headers["www-authenticate"].startswith("Bearer")


async def test_every_route_with_a_bad_job_id_is_json_400(
    app_client: tuple[FastAPI, httpx.AsyncClient], auth: dict[str, str]
) -> None:
    app, client = app_client
    with_id = [(m, p) for m, p in api_routes(app) if "{jobId}" in p]
    # Every other path parameter is a run's id (tests/runs/test_run_output.py walks its bad values).
    assert all("{runId}" in p for _, p in api_routes(app) if "{" in p and "{jobId}" not in p)
    assert with_id
    for method, path in with_id:
        response = await client.request(method, concrete(path, "Bad_ID"), json={"enabled": True}, headers=auth)
        assert_json_error(response, 400, "invalid_job_id")
        response = await client.request(method, concrete(path, "no-such-job"), json={"enabled": True}, headers=auth)
        assert_json_error(response, 404, "job_not_found")


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b"{", "application/json"),
        (b"enabled=true", "application/x-www-form-urlencoded"),
        (b"", "application/json"),
        (b"true", "text/plain"),
    ],
)
async def test_bad_bodies_are_json_400(
    client: httpx.AsyncClient, auth: dict[str, str], content: bytes, content_type: str
) -> None:
    response = await client.patch(
        "/api/jobs/metadata-sync", content=content, headers={**auth, "Content-Type": content_type}
    )
    assert_json_error(response)
    assert response.status_code == 400, response.text


async def test_bad_query_is_json_400(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    assert_json_error(await client.get("/api/jobs/logs/all", params={"limit": "many"}, headers=auth), 400)
    assert_json_error(await client.get("/api/activity", params={"offset": "-5"}, headers=auth), 400)


async def test_openapi_declares_the_bearer_scheme_for_docs_authorize(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    schemes = spec["components"]["securitySchemes"]
    assert [s["scheme"] for s in schemes.values()] == ["bearer"]
    assert all(op.get("security") for path in spec["paths"].values() for op in path.values())


async def test_www_authenticate_follows_rfc_6750(client: httpx.AsyncClient) -> None:
    missing = await client.get("/api/jobs")
    assert missing.headers["www-authenticate"] == 'Bearer realm="jobs-gateway"'
    bad = await client.get("/api/jobs", headers={"Authorization": "Bearer x.y.z"})
    assert bad.headers["www-authenticate"].startswith('Bearer realm="jobs-gateway", error="invalid_token"')
