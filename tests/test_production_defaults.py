"""What a stranger on the API port learns in production: nothing about the jobs unless a setting says so."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from app.platform.config import Settings
from tests.conftest import make_token, running_app

pytestmark = pytest.mark.sqlite_only  # no database work beyond start-up: nothing more to test on PostgreSQL

EXPLORERS = ("/openapi.json", "/docs", "/redoc")
INTROSPECTION = "{ __schema { queryType { name } } }"
HTML = {"Accept": "text/html"}


async def test_production_hides_the_explorers_introspection_and_open_metrics(
    settings_factory: Callable[..., Settings],
) -> None:
    settings = settings_factory(app_env="production")
    auth = {"Authorization": f"Bearer {make_token(settings)}"}
    async with running_app(settings) as (_, client):
        for path in EXPLORERS:
            response = await client.get(path)
            assert (response.status_code, response.json()["error"]) == (404, "not_found"), path
        assert (await client.get("/graphql", headers=HTML)).status_code == 404  # GraphiQL
        body = (await client.post("/graphql", json={"query": INTROSPECTION}, headers=auth)).json()
        assert body.get("data") is None and "introspection" in body["errors"][0]["message"].lower()
        assert (await client.get("/metrics")).status_code == 404
        # The API itself works as ever.
        assert (await client.get("/api/jobs", headers=auth)).status_code == 200


async def test_production_serves_metrics_to_the_scraper_holding_its_token(
    settings_factory: Callable[..., Settings],
) -> None:
    settings = settings_factory(app_env="production", metrics_token="s3cret-scrape-token")
    async with running_app(settings) as (_, client):
        refused = await client.get("/metrics")
        assert (refused.status_code, refused.json()["error"]) == (401, "invalid_token")
        wrong = await client.get("/metrics", headers={"Authorization": "Bearer guess"})
        assert wrong.status_code == 401
        api_token = await client.get("/metrics", headers={"Authorization": f"Bearer {make_token(settings)}"})
        assert api_token.status_code == 401  # an API token is not the scrape token
        scraped = await client.get("/metrics", headers={"Authorization": "Bearer s3cret-scrape-token"})
        assert scraped.status_code == 200 and "jobs_gateway_runs_started_total" in scraped.text
    assert "s3cret-scrape-token" not in repr(settings)  # a secret, kept out of reprs and errors


async def test_settings_turn_each_back_on_in_production(settings_factory: Callable[..., Settings]) -> None:
    settings = settings_factory(app_env="production", api_docs=True, graphql_introspection=True)
    auth = {"Authorization": f"Bearer {make_token(settings)}"}
    async with running_app(settings) as (_, client):
        assert (await client.get("/openapi.json")).json()["info"]["title"] == "jobs-gateway"
        for path in ("/docs", "/redoc"):
            response = await client.get(path)
            assert response.status_code == 200 and "/openapi.json" in response.text, path
        assert "graphiql" in (await client.get("/graphql", headers=HTML)).text.lower()
        body = (await client.post("/graphql", json={"query": INTROSPECTION}, headers=auth)).json()
        assert body["data"] == {"__schema": {"queryType": {"name": "Query"}}}


@pytest.mark.parametrize("env", ["development", "test"])
async def test_outside_production_everything_is_on_by_default(
    settings_factory: Callable[..., Settings], env: str
) -> None:
    settings = settings_factory(app_env=env)
    auth = {"Authorization": f"Bearer {make_token(settings)}"}
    async with running_app(settings) as (_, client):
        for path in EXPLORERS:
            assert (await client.get(path)).status_code == 200, path
        assert (await client.get("/graphql", headers=HTML)).status_code == 200
        body = (await client.post("/graphql", json={"query": INTROSPECTION}, headers=auth)).json()
        assert "errors" not in body
        assert (await client.get("/metrics")).status_code == 200
