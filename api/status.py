"""Reading the runtime's status snapshot defensively.

The snapshot is a plain dict (``{"sources": [{"source", "poller", "session", "loops": {name:
{...}}}], "outputs": [{"name", "state", "lag", ...}]}``). The API only ever reads it, and a
missing or oddly typed field must never turn a status page or a scrape into an error.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Final

import attrs

#: a loop counts as failing after this many frames in a row went missing
FAILING_AFTER_MISSING: Final = 3


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else []


def number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def text(value: Any, default: str = "") -> str:
    return value if isinstance(value, str) else default


@attrs.frozen
class LoopView:
    source: str
    name: str
    data: Mapping[str, Any]

    @property
    def state(self) -> str:
        return text(self.data.get("state"), "unknown")

    def count(self, key: str) -> float:
        return number(self.data.get(key)) or 0.0

    @property
    def failing(self) -> bool:
        return self.count("frames_missing") >= FAILING_AFTER_MISSING


def sources(status: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    for item in _list(status.get("sources")):
        if isinstance(item, Mapping):
            yield item


def loops(status: Mapping[str, Any]) -> Iterator[LoopView]:
    for source in sources(status):
        name = text(source.get("source"), "unknown")
        for loop_name, data in _mapping(source.get("loops")).items():
            if isinstance(data, Mapping):
                yield LoopView(source=name, name=str(loop_name), data=data)


def outputs(status: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    for item in _list(status.get("outputs")):
        if isinstance(item, Mapping) and isinstance(item.get("name"), str):
            yield item


def all_failing(status: Mapping[str, Any]) -> bool:
    """Every loop is failing (and there is at least one): the daemon does no useful work."""
    views = list(loops(status))
    return bool(views) and all(view.failing for view in views)


def store(status: Mapping[str, Any]) -> Mapping[str, Any]:
    """The daemon's view of its store writes (``state`` ok / failing, ``error``), or {}."""
    return _mapping(status.get("store"))
