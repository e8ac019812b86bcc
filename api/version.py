"""What the API calls itself: the package's name and its installed version."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Final

NAME: Final = "nightscout-connect"


def connect_version() -> str:
    """The installed package's version; ``0.0.0`` when running from a source tree."""
    try:
        return version(NAME)
    except PackageNotFoundError:
        return "0.0.0"
