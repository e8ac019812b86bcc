"""Capturing what the program logs, to grep it for secrets."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager

from connect.logs import configure


@contextmanager
def captured_logs() -> Iterator[io.StringIO]:
    """Every log line at debug level, as JSON, into the yielded stream; quiet again afterwards."""
    stream = io.StringIO()
    configure(fmt="json", level="debug", stream=stream)
    try:
        yield stream
    finally:
        configure(fmt="json", level="warning", stream=io.StringIO())
