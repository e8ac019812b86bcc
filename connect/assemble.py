"""Putting one daemon together: settings + source → store, HTTP client, driver, plan, outputs,
runtime. Every command that runs a source (run, once, check, capture, demo, ``--accounts-dir``)
and every embedding program goes through :func:`assemble`, so they all run the same daemon.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, ExitStack, asynccontextmanager

import httpx

from connect.alerting import AlertConfig, Alerting
from connect.builder import Builder
from connect.clock import Clock, wall_ms
from connect.contract import SourceInfo
from connect.daemon import Daemon
from connect.errors import ConfigError
from connect.httpkit import USER_AGENT, tls_context
from connect.runtime import GapFinder, SourceRuntime
from connect.settings import CoreSettings
from connect.subscriber import MqttSubscriber, PushSettings
from outputs import Output, build_outputs
from outputs.alert_settings import AlertSettings
from outputs.nightscout import NightscoutOutput
from store import AsyncStore, Store
from store.abc import WriterStore


def http_client() -> httpx.AsyncClient:
    """The client every source and output uses: bounded timeouts, our user agent, no redirects
    followed silently (vendors signal region changes in bodies, not redirects)."""
    return httpx.AsyncClient(
        verify=tls_context(),
        timeout=httpx.Timeout(30.0, connect=15.0),
        headers={"user-agent": USER_AGENT},
        follow_redirects=False,
    )


def gap_finder(outputs: list[Output]) -> GapFinder | None:
    """On an empty store, a source starts where the Nightscout site already is (so an existing
    site is not uploaded again), not ``backfill_days`` back."""
    for output in outputs:
        if isinstance(output, NightscoutOutput):
            return output.newest
    return None


async def try_outputs(
    settings: CoreSettings, astore: AsyncStore, client: httpx.AsyncClient
) -> list[tuple[bool, str]]:
    """Every output the settings enable, tried without writing (``check``): for each, whether
    it can deliver and the line ``check`` prints, ``output NAME TARGET: …``."""
    results: list[tuple[bool, str]] = []
    for output in build_outputs(settings, astore, client):
        ok, detail = await output.probe()
        results.append((ok, f"output {output.name} {output.target()}: {detail}"))
    return results


def open_store(settings: CoreSettings) -> WriterStore:
    """The store the settings name: PostgreSQL at ``settings.store_url`` (this account's rows of
    a shared database), else the SQLite file at ``settings.store_path`` (checked, and locked for
    this process, so a second daemon on the same file stops with one line). A store that cannot
    be used raises :class:`~connect.errors.StoreUnusable` in one line, without a password."""
    if settings.store_url is not None:
        from store.postgres import PostgresStore

        return PostgresStore.open(settings.store_url.get_secret_value(), account=settings.account)
    return Store.open(settings.store_path)


def reserve_stores(accounts: Sequence[CoreSettings]) -> Callable[[], None]:
    """Before many accounts' stores are opened one by one (:func:`open_store`): what can be done
    for all of them at once. PostgreSQL: every account's one-daemon lock taken in one statement
    per database. Returns what gives back the part no store took (blocking, as this is)."""
    by_url: dict[str, list[str]] = {}
    for settings in accounts:
        if settings.store_url is not None:
            by_url.setdefault(settings.store_url.get_secret_value(), []).append(settings.account)
    if not by_url:
        return lambda: None
    from store.postgres import reserved

    stack = ExitStack()
    for url, names in by_url.items():
        stack.enter_context(reserved(url, names))
    return stack.close


async def try_subscription(settings: CoreSettings, astore: AsyncStore) -> list[tuple[bool, str]]:
    """The MQTT subscription, when the settings enable it, tried as ``check`` tries outputs:
    connect, log in, subscribe to every topic filter, disconnect (under a client id of its
    own; nothing is stored). Whether it worked, and the line ``check`` prints."""
    if not isinstance(settings, PushSettings) or settings.mqtt_source_url is None:
        return []
    subscriber = MqttSubscriber(settings, astore)
    ok, detail = await subscriber.probe()
    return [(ok, f"mqtt source {subscriber.broker.display()}: {detail}")]


@asynccontextmanager
async def assemble(
    settings: CoreSettings,
    source: SourceInfo,
    *,
    client: httpx.AsyncClient | None = None,
    store: WriterStore | None = None,
    clock: Clock = wall_ms,
    rng: random.Random | None = None,
    deliver: bool = True,
) -> AsyncIterator[Daemon]:
    """One daemon for ``source``, built and not yet started.

    ``client`` and ``store`` default to :func:`http_client` and the settings' store
    (:func:`open_store`); whatever is made here is closed on the way out, while a client or
    store passed in stays the caller's (a capture's recording client, an in-memory store for
    a run that must write nothing). ``deliver=False`` builds no output, so nothing but the
    vendor is contacted. ``clock`` and ``rng`` reach the runtime and the outputs alike.
    """
    async with AsyncExitStack() as stack:
        if store is None:
            # checked and locked: one daemon per store, and a store it cannot use is one line
            store = open_store(settings)
            stack.callback(store.close)
        if client is None:
            client = await stack.enter_async_context(http_client())
        builder = Builder(source.name)
        source.factory(settings, client).generate_driver(builder)
        astore = AsyncStore(store)
        outputs = build_outputs(settings, astore, client, clock=clock, rng=rng) if deliver else []
        runtime = SourceRuntime(
            builder.build(loops_required=source.polls),
            astore,
            clock=clock,
            backfill_days=settings.backfill_days,
            rng=rng,
            account=settings.account or None,
            gap_finder=gap_finder(outputs),
        )
        alerting = None
        if deliver and isinstance(settings, AlertSettings):
            alerting = Alerting(
                astore,
                AlertConfig(
                    key=runtime.key,
                    label=settings.account or source.name,
                    thresholds=settings.thresholds(),
                    units=settings.display_units,
                    news_ms=int(settings.events_max_age_minutes * 60_000),
                    keep_ms=int(settings.events_keep_days * 86_400_000),
                ),
                clock=clock,
                rng=rng,
            )
        daemon = Daemon(
            settings=settings,
            source=source,
            store=store,
            astore=astore,
            client=client,
            runtime=runtime,
            outputs=outputs,
            alerting=alerting,
        )
        runtime.on_persist = daemon.persisted
        subscribes = isinstance(settings, PushSettings) and settings.mqtt_source_url is not None
        if source.name == "mqtt" and not subscribes:
            raise ConfigError(
                "CONNECT_SOURCE=mqtt: set CONNECT_MQTT_SOURCE_URL to the broker to subscribe to"
            )
        if isinstance(settings, PushSettings) and subscribes and deliver:
            daemon.pushers.append(
                MqttSubscriber(settings, astore, written=daemon.persisted, clock=clock, rng=rng)
            )
        if alerting is not None:
            alerting.on_events = daemon.events_written
        yield daemon
