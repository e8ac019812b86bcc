"""structlog configuration: console on a terminal, JSON otherwise, secrets always removed."""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

from connect.redact import redact

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def _redact_event(_logger: Any, _method: str, event: structlog.types.EventDict) -> structlog.types.EventDict:
    redacted: structlog.types.EventDict = redact(dict(event))
    return redacted


class _ThroughStructlog(logging.Handler):
    """Sends the standard library's records (hypercorn, httpx, paho) through our processors, so
    the same redaction applies to them as to our own lines."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a library's malformed format string must not break logging
            message = str(record.msg)
        structlog.get_logger(record.name).log(record.levelno, message, library=True)


#: the level the last :func:`configure` set (structlog's default logger prints everything)
_level = logging.DEBUG


def debug_enabled() -> bool:
    """Debug lines are printed: worth the cost of producing them (every machine transition)."""
    return _level <= logging.DEBUG


def configure(*, fmt: str = "auto", level: str = "info", stream: TextIO | None = None) -> None:
    """Configure structlog once per process. ``fmt`` is auto, json or console."""
    global _level
    _level = LEVELS.get(level, logging.INFO)
    out = stream or sys.stderr
    use_console = fmt == "console" or (fmt == "auto" and out.isatty())
    renderer: Any
    if use_console:
        renderer = structlog.dev.ConsoleRenderer(
            colors=out.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
    else:
        renderer = structlog.processors.JSONRenderer(sort_keys=True)
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        # tracebacks without frame locals: locals hold passwords and tokens
        structlog.processors.ExceptionRenderer(
            structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
        )
        if not use_console
        else structlog.processors.format_exc_info,
        _redact_event,
        renderer,
    ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_level),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    # libraries log at WARNING and above only: httpx's INFO lines carry full URLs (tokens)
    root = logging.getLogger()
    root.handlers = [_ThroughStructlog()]
    root.setLevel(logging.WARNING)
