"""Logging: one JSON object per line for our events and the libraries' records alike."""

from __future__ import annotations

import io
import json
import logging

import pytest
import structlog

from gateway import logs


@pytest.fixture(autouse=True)
def _reset() -> object:
    yield
    structlog.contextvars.clear_contextvars()
    structlog.reset_defaults()
    logging.getLogger().handlers[:] = []


def lines(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_events_are_json_lines_with_level_time_and_context() -> None:
    out = io.StringIO()
    logs.configure("info", "json", stream=out)
    log = structlog.get_logger()
    structlog.contextvars.bind_contextvars(conn_id="c7")
    log.info("session.open", client="192.0.2.1:4000")
    log.debug("not at info")
    [line] = lines(out)
    assert line["event"] == "session.open"
    assert line["level"] == "info"
    assert line["client"] == "192.0.2.1:4000"
    assert line["conn_id"] == "c7"
    assert str(line["timestamp"]).endswith("Z")


def test_an_exception_is_rendered_in_its_line() -> None:
    out = io.StringIO()
    logs.configure("info", "json", stream=out)
    try:
        raise ValueError("broken on purpose")
    except ValueError:
        structlog.get_logger().exception("session.error")
    [line] = lines(out)
    assert line["level"] == "error"
    assert "ValueError: broken on purpose" in str(line["exception"])


def test_a_library_record_has_the_same_shape_on_the_same_stream() -> None:
    out = io.StringIO()
    logs.configure("warning", "json", stream=out)
    structlog.get_logger().warning("upstream.disconnected", reason="gone")
    logging.getLogger("trio-websocket").warning("closing %s", "now")
    logging.getLogger("trio-websocket").info("below the level")
    first, second = lines(out)
    assert (first["event"], first["level"]) == ("upstream.disconnected", "warning")
    assert (second["event"], second["level"]) == ("closing now", "warning")


def test_console_format_is_for_people() -> None:
    out = io.StringIO()
    logs.configure("info", "console", stream=out)
    structlog.get_logger().info("gateway.ready", users=3)
    text = out.getvalue()
    assert "gateway.ready" in text
    assert "users=3" in text
    assert not text.lstrip().startswith("{")
