"""The dashboard's static files, read once and published under a content-hash version.

Every asset is served at `/dashboard/static/<version>/<path>`, where `version` is a hash of the whole static
tree: relative module imports between the scripts keep working, any changed file gives every URL a new
version, and so each response can be cached for a year as immutable.
"""

from __future__ import annotations

import hashlib
import mimetypes
from dataclasses import dataclass
from pathlib import Path

STATIC_DIR = Path(__file__).parent / "static"
PAGE = "index.html"
# The page names the asset version and the API endpoint through these markers.
VERSION_MARKER = "{{version}}"
ROOT_MARKER = "{{root}}"
_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".md": "text/plain; charset=utf-8",
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    media_type: str


@dataclass(frozen=True)
class Assets:
    version: str
    page: str
    files: dict[str, Asset]

    def render_page(self, root_path: str) -> str:
        return self.page.replace(VERSION_MARKER, self.version).replace(ROOT_MARKER, root_path)


def load(directory: Path = STATIC_DIR) -> Assets:
    """Read every file under `directory`; the page is kept apart, since it is served uncached."""
    files: dict[str, Asset] = {}
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        name = path.relative_to(directory).as_posix()
        body = path.read_bytes()
        if name == PAGE:
            continue
        digest.update(name.encode() + b"\0" + hashlib.sha256(body).digest())
        files[name] = Asset(body, _media_type(path))
    page = (directory / PAGE).read_text(encoding="utf-8")
    return Assets(version=digest.hexdigest()[:12], page=page, files=files)


def _media_type(path: Path) -> str:
    return _TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
