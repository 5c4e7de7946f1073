"""The dashboard page and its assets: static files only, the browser talks to the public GraphQL API."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse

from app.dashboard import assets as dashboard_assets

# Scripts and styles come only from this origin, nothing may be framed, and Trusted Types make any
# assignment of a string to an HTML sink throw: job data reaches the page as text, never as markup.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'; "
    "require-trusted-types-for 'script'; trusted-types 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
IMMUTABLE = "public, max-age=31536000, immutable"


def router(assets: dashboard_assets.Assets | None = None) -> APIRouter:
    """Routes for `/` and `/dashboard`; assets are read once, here, and kept in memory."""
    loaded = assets or dashboard_assets.load()
    api = APIRouter(include_in_schema=False)

    @api.get("/")
    async def root(request: Request) -> RedirectResponse:
        return RedirectResponse(f"{request.scope.get('root_path', '')}/dashboard", status_code=307)

    @api.get("/dashboard")
    async def page(request: Request) -> HTMLResponse:
        return HTMLResponse(loaded.render_page(request.scope.get("root_path", "")), headers=PAGE_HEADERS)

    @api.get("/dashboard/static/{version}/{path:path}")
    async def asset(version: str, path: str) -> Response:
        found = loaded.files.get(path) if version == loaded.version else None
        if found is None:
            # An old page asking for a previous version's file gets a 404, never a mix of versions.
            return Response(status_code=404, headers={"Cache-Control": "no-store"})
        headers = {"Cache-Control": IMMUTABLE, "X-Content-Type-Options": "nosniff"}
        return Response(found.body, media_type=found.media_type, headers=headers)

    return api
