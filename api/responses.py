"""The JSON answers every route and error handler sends, encoded once, as Nightscout does
(``ensure_ascii=False``: stored text comes back as it was written)."""

from __future__ import annotations

import json
from typing import Any, Final

from fastapi.responses import Response

JSON: Final = "application/json"


def error_body(status: int, message: str, description: str | None = None) -> bytes:
    """Nightscout's error document: ``status`` and ``message``, and ``description`` when known."""
    doc: dict[str, Any] = {"status": status, "message": message}
    if description is not None:
        doc["description"] = description
    return json.dumps(doc, ensure_ascii=False).encode("utf-8")


def json_response(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(value, ensure_ascii=False).encode("utf-8"),
        status_code=status,
        media_type=JSON,
        headers=headers,
    )
