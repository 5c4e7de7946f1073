"""The layout's rules that import-linter cannot check by itself (`make lint` runs its contracts)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.sqlite_only


def _layers() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    contracts = config["tool"]["importlinter"]["contracts"]
    [layers] = [c["layers"] for c in contracts if c["type"] == "layers"]
    return [name.strip() for layer in layers for name in re.split(r"[|:]", layer)]


def test_every_part_of_app_has_its_place_in_the_layers() -> None:
    """A new module or folder at app/'s root must be given a layer, or the arrows say nothing about it."""
    named = set(_layers())
    parts = {
        f"app.{p.stem}" if p.is_file() else f"app.{p.name}"
        for p in (ROOT / "app").iterdir()
        if (p.suffix == ".py" and p.stem != "__init__") or (p.is_dir() and (p / "__init__.py").exists())
    }
    unplaced = parts - named - {"app.migrations", "app.migrations_config"}  # run by tortoise, never imported
    assert not unplaced, f"give these a layer in pyproject.toml's import contracts: {sorted(unplaced)}"
    assert "workers" in named


def test_nothing_inspects_frames() -> None:
    """Objects are passed, never dug out of a coroutine's or caller's frame."""
    frame_words = re.compile(r"\b(cr_frame|gi_frame|ag_frame|f_locals|f_back|_getframe|currentframe)\b")
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for folder in ("app", "workers")
        for path in (ROOT / folder).rglob("*.py")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if frame_words.search(line)
    ]
    assert not found, found


def test_every_test_the_engine_doc_names_exists() -> None:
    """docs/engine.md names the test guarding each invariant: a renamed or deleted test must not leave it lying."""
    missing = []
    for line in (ROOT / "docs" / "engine.md").read_text().splitlines():
        path: str | None = None
        for path_part, name in re.findall(r"`(tests/[\w/]+\.py)?(?:::(\w+))?`", line):
            path = path_part or path
            if path is None:
                continue
            source = ROOT / path
            if not source.exists():
                missing.append(path)
            elif name and not re.search(rf"^(async )?def {name}\(", source.read_text(), re.M):
                missing.append(f"{path}::{name}")
    assert not missing, missing
