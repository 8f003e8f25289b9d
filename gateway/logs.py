"""The only place that configures logging: structlog, one JSON object per line (or console
rendering), and the standard library's records (trio-websocket's) in the same shape on the
same stream."""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
FORMATS = ("json", "console")


def configure(level: str = "info", fmt: str | None = None, stream: TextIO | None = None) -> None:
    """Log at `level` and above to `stream` (stdout), as JSON lines, or for people when `fmt`
    is "console" (the default when the stream is a terminal)."""
    out = stream if stream is not None else sys.stdout
    if fmt is None:
        fmt = "console" if out.isatty() else "json"
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=out.isatty())
        if fmt == "console"
        else structlog.processors.JSONRenderer()
    )
    # Our own events are rendered and written by structlog alone: through the standard
    # library's logging (a LogRecord, a handler, a formatter) a line cost three times as much,
    # and at the default level every message and connection writes a few.
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        logger_factory=structlog.WriteLoggerFactory(file=out),
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LEVELS[level])
    # trio-websocket narrates every frame at DEBUG: keep it to warnings unless asked.
    logging.getLogger("trio-websocket").setLevel(
        logging.DEBUG if level == "debug" else logging.WARNING
    )
