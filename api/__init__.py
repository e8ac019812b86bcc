"""The thin HTTP API over the store: Nightscout-compatible reads, status, health and metrics.

``api.settings`` stays importable without the web stack (the CLI composes its settings model
from it); everything else loads on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from api.settings import ApiSettings, check_bind

if TYPE_CHECKING:
    from api.app import create_app
    from api.server import serve

__all__ = ["ApiSettings", "check_bind", "create_app", "serve"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from api.app import create_app

        return create_app
    if name == "serve":
        from api.server import serve

        return serve
    raise AttributeError(f"module 'api' has no attribute {name!r}")
