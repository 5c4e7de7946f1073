"""The page and its assets over plain HTTP: redirect, Content-Security-Policy, cache headers, no inline code."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import httpx

from app.dashboard import assets as dashboard_assets
from app.dashboard.routes import CONTENT_SECURITY_POLICY

STATIC = Path(dashboard_assets.__file__).parent / "static"


async def test_root_redirects_to_the_dashboard(client: httpx.AsyncClient) -> None:
    response = await client.get("/")
    assert response.status_code == 307
    assert response.headers["location"] == "/dashboard"


async def test_the_page_carries_a_strict_policy_and_is_never_cached(client: httpx.AsyncClient) -> None:
    response = await client.get("/dashboard")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    policy = dict(d.strip().split(" ", 1) for d in response.headers["content-security-policy"].split(";"))
    assert policy["default-src"] == "'none'"
    assert policy["script-src"] == "'self'"
    assert policy["style-src"] == "'self'"
    assert policy["connect-src"] == "'self'"
    assert policy["img-src"] == "'self' data:"
    assert policy["base-uri"] == "'none'"
    assert policy["form-action"] == "'none'"
    assert policy["frame-ancestors"] == "'none'"
    assert policy["require-trusted-types-for"] == "'script'"
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-content-type-options"] == "nosniff"


async def test_the_page_has_no_inline_script_or_style_and_nothing_from_elsewhere(client: httpx.AsyncClient) -> None:
    html = (await client.get("/dashboard")).text
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", html, re.S)
    assert scripts, "the page loads its scripts"
    assert all('src="/dashboard/static/' in attrs and body.strip() == "" for attrs, body in scripts)
    assert "<style" not in html
    assert not re.search(r"\sstyle=|\son[a-z]+=", html)
    assert not re.search(r"(src|href)=\"(https?:)?//", html)
    assert "{{" not in html


async def test_assets_have_hashed_urls_and_are_cached_for_a_year(client: httpx.AsyncClient) -> None:
    html = (await client.get("/dashboard")).text
    urls = re.findall(r"(?:src|href)=\"(/dashboard/static/[^\"]+)\"", html)
    assert {u.rsplit("/", 1)[-1] for u in urls} == {"style.css", "graphql-ws.min.js", "main.js"}
    versions = {u.split("/")[3] for u in urls}
    assert versions == {dashboard_assets.load().version}
    expected_types = {".css": "text/css", ".js": "text/javascript"}
    for url in [*urls, urls[-1].replace("main.js", "schedule.js")]:
        response = await client.get(url)
        assert response.status_code == 200, url
        assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert response.headers["content-type"].startswith(expected_types[Path(url).suffix])
        assert response.headers["x-content-type-options"] == "nosniff"


async def test_another_version_or_a_path_outside_the_folder_is_not_found(client: httpx.AsyncClient) -> None:
    version = dashboard_assets.load().version
    for url in (
        "/dashboard/static/000000000000/js/main.js",
        f"/dashboard/static/{version}/js/missing.js",
        f"/dashboard/static/{version}/index.html",
        f"/dashboard/static/{version}/%2e%2e/routes.py",
    ):
        response = await client.get(url)
        assert response.status_code == 404, url
        assert "immutable" not in response.headers.get("cache-control", "")


def test_the_version_follows_the_content(tmp_path: Path) -> None:
    (tmp_path / "js").mkdir()
    (tmp_path / "index.html").write_text("<p>{{version}}</p>")
    (tmp_path / "js" / "a.js").write_text("one")
    first = dashboard_assets.load(tmp_path)
    assert dashboard_assets.load(tmp_path).version == first.version
    (tmp_path / "index.html").write_text("<p>changed {{version}}</p>")
    assert dashboard_assets.load(tmp_path).version == first.version  # the page is not cached, so not hashed
    (tmp_path / "js" / "a.js").write_text("two")
    second = dashboard_assets.load(tmp_path)
    assert second.version != first.version
    assert second.render_page("") == f"<p>changed {second.version}</p>"


def test_the_vendored_client_is_the_one_its_readme_names() -> None:
    vendor = STATIC / "vendor" / "graphql-ws"
    readme = (vendor / "README.md").read_text()
    digest = hashlib.sha256((vendor / "graphql-ws.min.js").read_bytes()).hexdigest()
    assert f"| File sha256 | `{digest}` |" in readme
    assert "graphql-ws` 6.4.2" in readme
    assert (vendor / "LICENSE.md").read_text().startswith("MIT License")
