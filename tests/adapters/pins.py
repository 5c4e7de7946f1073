"""What every contract test of tests/adapters/ checks first: the versions an adapter was written for, and the
sources of the dependency code it copies, overrides or mimics. A failure says what moved and what to re-check."""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable
from importlib import metadata
from typing import Any

Sources = dict[str, tuple[Callable[..., Any], str]]  # name -> (the code, the digest of its source when pinned)


def digest(function: Callable[..., Any]) -> str:
    return hashlib.sha256(inspect.getsource(function).encode()).hexdigest()[:16]


def check_version(package: str, pinned: str, adapter: str) -> None:
    installed = metadata.version(package)
    assert installed == pinned, (
        f"{package} is {installed}, {adapter} was written for {pinned}: re-check it against the new release (the "
        "source pins say what moved), then update the pinned version"
    )


def check_source(name: str, sources: Sources, adapter: str) -> None:
    function, pinned = sources[name]
    assert digest(function) == pinned, (
        f"{name} changed: re-check {adapter} against it (re-copy what it copies), then pin the new digest "
        f"{digest(function)}"
    )
