"""Shared test setup: quiet, machine-readable logs (tests that inspect logs configure their own)."""

from __future__ import annotations

import io

from connect.logs import configure

configure(fmt="json", level="warning", stream=io.StringIO())
