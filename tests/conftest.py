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
from tests.postgres import Cluster
from tests.stores import BACKENDS, MakeStore, store_factory

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


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[Cluster]:
    """One private PostgreSQL cluster per test process (each xdist worker has its own).

    Without PostgreSQL installed the test is skipped, or fails when ``CI`` is set.
    """
    try:
        cluster = Cluster()
    except FileNotFoundError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"{exc} (CI requires PostgreSQL)")
        pytest.skip(str(exc))
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
def postgres_url(postgres_cluster: Cluster, request: pytest.FixtureRequest) -> str:
    """The URL of a fresh, empty database on the private cluster, one per test."""
    name = "t_" + "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[:50]
    return postgres_cluster.create_database(name)


@pytest.fixture(params=BACKENDS)
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeStore]:
    """Stores of each backend in turn (the store contract): ``make_store(account="")``."""
    yield from store_factory(request, tmp_path)
