"""What a handler's end says about its run: the one-line `details` the spec shows, and beside it the run's `output`
(the JSON object a handler may return) or, for a failure, the exception's type and the handler's traceback.

The traceback keeps the frames of the handler's code (and of the libraries it called), not the framework's that
called it: the engine's, the job type registry's, asyncio's. Whoever reads it wants the line of the handler that
failed, not the way the engine reached it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import threading
import traceback as tb
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.engine.runlog import json_text, storable
from app.platform.config import Settings

SUCCESS, ERROR = "success", "error"
# `details` of a run that returned an object without a `summary`: its JSON, cut to this many characters.
DETAILS_CHARS = 500
# job_run.error_type's width.
ERROR_TYPE_CHARS = 200
# A traceback longer than this keeps its beginning and its end (where the failing line is).
TRACEBACK_CHARS = 32 * 1024

_FRAMEWORK = tuple(
    str(p)
    for p in (
        Path(__file__).parent,  # the engine
        Path(__file__).parents[1] / "job_types" / "registry.py",
        Path(asyncio.__file__).parent,
        Path(concurrent.futures.__file__).parent,
        Path(threading.__file__),
    )
)


@dataclass(frozen=True, slots=True)
class Outcome:
    result: str
    details: str
    output: dict[str, Any] | None = None
    error_type: str | None = None
    traceback: str | None = None


def of_return(value: object, settings: Settings) -> Outcome:
    """A handler's return value: a string is the run's details; a JSON object is its output, whose `summary`
    (a string) is the details, else the object's JSON cut short. An object that is not JSON, or larger than
    RUN_OUTPUT_MAX_BYTES, fails the run, saying why (its work is done, but what it reported is lost)."""
    if not isinstance(value, dict):
        return Outcome(SUCCESS, storable(str(value)))
    try:
        text = json.dumps(value, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        return Outcome(ERROR, f"the handler's output is not a JSON object: {exc}", error_type="OutputRefused")
    size = len(text.encode())
    if size > settings.run_output_max_bytes:
        details = f"the handler's output is {size} bytes, over RUN_OUTPUT_MAX_BYTES ({settings.run_output_max_bytes})"
        return Outcome(ERROR, details, error_type="OutputRefused")
    if "\\u0000" in text:  # PostgreSQL refuses NUL characters in JSON
        text = json_text(json.loads(text))
    output: dict[str, Any] = json.loads(text)  # as stored: keys are strings, tuples lists
    summary = output.get("summary")
    details = summary if isinstance(summary, str) else text[:DETAILS_CHARS]
    return Outcome(SUCCESS, details, output=output)


def of_error(error: BaseException) -> Outcome:
    """A handler's exception: details as before (its message, else its type), with its type and traceback."""
    return Outcome(
        ERROR,
        storable(str(error) or type(error).__name__),
        error_type=type_name(error),
        traceback=storable(handler_traceback(error)),
    )


def type_name(error: BaseException) -> str:
    """`module.QualName` (a builtin's without its module), cut to what the column holds."""
    cls = type(error)
    name = cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    return storable(name)[:ERROR_TYPE_CHARS]


def handler_traceback(error: BaseException) -> str:
    summary = tb.TracebackException.from_exception(error)
    _without_framework(summary, set())
    text = "".join(summary.format())
    if len(text) > TRACEBACK_CHARS:
        half = TRACEBACK_CHARS // 2
        cut = len(text) - 2 * half
        text = f"{text[:half]}\n[... {cut} characters cut ...]\n{text[-half:]}"
    return text


def _without_framework(summary: tb.TracebackException, seen: set[int]) -> None:
    if id(summary) in seen:
        return
    seen.add(id(summary))
    summary.stack = tb.StackSummary.from_list([f for f in summary.stack if not f.filename.startswith(_FRAMEWORK)])
    for chained in (summary.__cause__, summary.__context__, *(getattr(summary, "exceptions", None) or ())):
        if chained is not None:
            _without_framework(chained, seen)
