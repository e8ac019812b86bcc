"""Shared test setup: quiet, machine-readable logs (tests that inspect logs configure their own),
and generic fixtures (a real mosquitto broker)."""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from connect.logs import configure
from tests.mosquitto import Broker

configure(fmt="json", level="warning", stream=io.StringIO())


@pytest.fixture
def mosquitto_factory(tmp_path: Path) -> Iterator[Callable[..., Broker]]:
    """Start real mosquitto brokers (``Broker`` keyword arguments); all are stopped afterwards.

    Without the broker installed the test is skipped, or fails when ``CI`` is set.
    """
    brokers: list[Broker] = []

    def make(**kwargs: Any) -> Broker:
        try:
            broker = Broker(tmp_path / f"mosquitto-{len(brokers)}", **kwargs)
        except FileNotFoundError as exc:
            if os.environ.get("CI"):
                pytest.fail(f"{exc} (CI requires the broker)")
            pytest.skip(str(exc))
        brokers.append(broker)
        broker.start()
        return broker

    yield make
    for broker in brokers:
        broker.stop(kill=True)


@pytest.fixture
def mosquitto(mosquitto_factory: Callable[..., Broker]) -> Broker:
    """One anonymous broker on a free loopback port."""
    return mosquitto_factory()
