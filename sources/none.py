"""``none``: no polling source. The daemon runs only its push sources (the write API, an MQTT
subscription), its store, its outputs and its API; the runtime holds no loop."""

from __future__ import annotations

from typing import Any

import attrs
import httpx

from connect.contract import BuilderLike, SourceInfo
from connect.fields import ConnectSettings


class NoneSettings(ConnectSettings):
    """``none`` has no settings of its own."""


@attrs.frozen
class NoDriver:
    """Registers nothing: a plan without loops."""

    def generate_driver(self, builder: BuilderLike) -> None:
        return None


def make(settings: Any, client: httpx.AsyncClient) -> NoDriver:
    return NoDriver()


SOURCE = SourceInfo(
    name="none",
    description="no polling source: only what is pushed (the write API, an MQTT subscription)",
    settings=NoneSettings,
    factory=make,
    polls=False,
)

#: ``mqtt``: no polling source, only the MQTT subscription (``CONNECT_MQTT_SOURCE_URL``)
MQTT = SourceInfo(
    name="mqtt",
    description="no polling source: only the MQTT subscription of CONNECT_MQTT_SOURCE_URL",
    settings=NoneSettings,
    factory=make,
    polls=False,
)
