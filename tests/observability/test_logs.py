"""LOG_FORMAT and LOG_LEVEL: JSON lines for machines, console lines for people, bound context on both."""

from __future__ import annotations

import io
import json
import logging
import logging.config
import sys
from collections.abc import Iterator

import pytest
import structlog
import uvicorn.config
from pydantic import ValidationError

from app.platform.logs import configure_logging
from tests.conftest import make_settings

pytestmark = pytest.mark.sqlite_only  # logging configuration: no database involved


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    yield
    structlog.contextvars.clear_contextvars()
    logging.getLogger("uvicorn.access").propagate = True
    configure_logging(make_settings(), sys.stderr)


def test_auto_writes_json_lines_when_not_on_a_terminal() -> None:
    logging.config.dictConfig(uvicorn.config.LOGGING_CONFIG)  # what uvicorn does before the app starts
    out = io.StringIO()
    configure_logging(make_settings(log_format="auto"), out)
    structlog.contextvars.bind_contextvars(request_id="r-1", user="5")
    logging.getLogger("uvicorn.access").info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:1", "GET", "/api/jobs", "1.1", 200)
    try:
        raise RuntimeError("kaput")
    except RuntimeError:
        logging.getLogger("app.engine.runner").exception("run %s of %s failed", 3, "sync")
    access, failure = (json.loads(line) for line in out.getvalue().splitlines())
    assert access["message"] == '127.0.0.1:1 - "GET /api/jobs HTTP/1.1" 200'
    assert (access["request_id"], access["user"], access["level"], access["logger"]) == (
        "r-1",
        "5",
        "info",
        "uvicorn.access",
    )
    assert access["timestamp"].endswith("Z")
    assert failure["message"] == "run 3 of sync failed" and "RuntimeError: kaput" in failure["exception"]


def test_auto_writes_console_lines_on_a_terminal() -> None:
    out = Terminal()
    configure_logging(make_settings(log_format="auto"), out)
    logging.getLogger("app.test").warning("hello %s", "operator")
    line = out.getvalue()
    assert "hello operator" in line and not line.lstrip().startswith("{")


def test_log_format_json_wins_over_a_terminal_and_log_level_filters() -> None:
    out = Terminal()
    configure_logging(make_settings(log_format="json", log_level="warning"), out)
    logging.getLogger("app.test").info("hidden")
    structlog.get_logger("app.test").warning("shown", job_id="sync")
    [line] = [json.loads(x) for x in out.getvalue().splitlines()]
    assert (line["message"], line["job_id"], line["level"]) == ("shown", "sync", "warning")


def test_configuring_twice_keeps_one_handler() -> None:
    configure_logging(make_settings(), io.StringIO())
    configure_logging(make_settings(), io.StringIO())
    ours = [h for h in logging.getLogger().handlers if type(h).__name__ == "_Ours"]
    assert len(ours) == 1


def test_an_unknown_log_level_is_refused() -> None:
    with pytest.raises(ValidationError, match="LOG_LEVEL must be one of"):
        make_settings(log_level="loud")


def test_loggers_a_dict_config_disabled_log_again() -> None:
    module_logger = logging.getLogger("app.some_module")  # created at import, before any configuration
    logging.config.dictConfig({"version": 1, "handlers": {}, "loggers": {}})  # what arq's CLI does
    assert module_logger.disabled
    out = io.StringIO()
    configure_logging(make_settings(log_format="json"), out)
    module_logger.warning("heard")
    assert json.loads(out.getvalue())["message"] == "heard"


def test_an_access_log_turned_off_stays_off() -> None:
    logging.config.dictConfig(uvicorn.config.LOGGING_CONFIG)
    access = logging.getLogger("uvicorn.access")
    access.handlers, access.propagate = [], False  # what `uvicorn --no-access-log` does
    out = io.StringIO()
    configure_logging(make_settings(log_format="json"), out)
    access.info("GET /")
    assert out.getvalue() == ""
