"""Which outputs a daemon runs: the ones whose settings are present."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from connect.clock import wall_ms
from outputs.alert_settings import AlertSettings
from outputs.delivery import Clock, Output
from outputs.events import NotifyOutput, WebhookOutput, notify_names
from outputs.mqtt import MqttOutput
from outputs.nightscout import NightscoutOutput

if TYPE_CHECKING:
    import httpx

    from store.aio import AsyncStore


def build_outputs(
    settings: Any,
    astore: AsyncStore,
    client: httpx.AsyncClient,
    *,
    clock: Clock = wall_ms,
    rng: random.Random | None = None,
) -> list[Output]:
    """The outputs a settings instance enables (an :class:`outputs.settings.OutputSettings`,
    or any composed model that has its fields)."""
    outputs: list[Output] = []
    if getattr(settings, "nightscout_endpoint", None):
        outputs.append(NightscoutOutput.from_settings(settings, astore, client, clock=clock, rng=rng))
    if getattr(settings, "mqtt_url", None) is not None:
        outputs.append(MqttOutput.from_settings(settings, astore, clock=clock, rng=rng))
    if isinstance(settings, AlertSettings):
        for hook in settings.hooks():
            outputs.append(WebhookOutput(hook, astore, client, clock=clock, rng=rng))
        urls = settings.notify_targets()
        for url, name in zip(urls, notify_names(urls), strict=True):
            outputs.append(
                NotifyOutput(
                    url,
                    name,
                    astore,
                    events=settings.notified_events(),
                    units=settings.display_units,
                    clock=clock,
                    rng=rng,
                )
            )
    return outputs
