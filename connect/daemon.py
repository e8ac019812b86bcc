"""A daemon built by :func:`connect.assemble.assemble`, and the ways it runs: every loop forever
(with signals and the API), or one frame per loop (cron mode)."""

from __future__ import annotations

import functools
import signal
import sys
from collections.abc import Callable
from typing import Any

import attrs
import httpx
import structlog
import trio

from api.settings import ApiSettings, Display, check_bind
from connect.alerting import Alerting
from connect.contract import SourceInfo
from connect.errors import StoreError
from connect.redact import redact
from connect.runtime import SourceRuntime
from connect.settings import CoreSettings
from outputs import Output
from outputs.alert_settings import AlertSettings
from store import AsyncStore
from store.abc import ReaderStore, WriterStore
from store.database import status_json

log = structlog.get_logger("connect.daemon")

#: how often the status is looked at when nothing wakes the status task (it is written only
#: when it changed)
STATUS_EVERY_S = 60.0
#: how long the status task lets a burst of wakes settle before it looks: a frame, the alert
#: events it raises and their delivery each wake it, and one write serves them all
STATUS_SETTLE_S = 0.5


@attrs.define
class Daemon:
    """One configured daemon: a source runtime over a store, plus its outputs."""

    settings: CoreSettings
    source: SourceInfo
    store: WriterStore
    astore: AsyncStore
    client: httpx.AsyncClient
    runtime: SourceRuntime
    outputs: list[Output] = attrs.Factory(list)
    #: the alert rules over this account's readings (None: a run that writes nothing)
    alerting: Alerting | None = None
    #: what the program running this daemon adds to its status, by key (``--accounts-dir``:
    #: the accounts of the process that did not start)
    notes: dict[str, Any] = attrs.Factory(dict)
    #: push sources beside the runtime's loops (the MQTT subscription)
    pushers: list[Any] = attrs.Factory(list)
    _status_dirty: trio.Event = attrs.Factory(trio.Event)
    #: the status row as last written (None before the first write, and after a failed one)
    _saved_status: str | None = None

    def status(self) -> dict[str, Any]:
        """A snapshot of every machine and output, secrets removed."""
        snapshot: dict[str, Any] = {**self.notes, "sources": [self.runtime.status()]}
        snapshot["outputs"] = [output.status() for output in self.outputs]
        if self.pushers:
            snapshot["push"] = [pusher.status() for pusher in self.pushers]
        snapshot["store"] = self.astore.health
        if self.alerting is not None:
            snapshot["alerts"] = [self.alerting.status()]
        result: dict[str, Any] = redact(snapshot)
        return result

    def persisted(self) -> None:
        self._status_dirty.set()
        if self.alerting is not None:
            self.alerting.wake()
        for output in self.outputs:
            output.wake()

    def events_written(self) -> None:
        """The alerting task wrote events: the outputs that carry them deliver them."""
        self._status_dirty.set()
        for output in self.outputs:
            output.wake()

    def store_fault(self) -> str | None:
        """What is wrong with the store while it fails (None while it works)."""
        fault = self.astore.fault
        return None if fault is None else str(fault)

    async def save_status(self, *, if_changed: bool = False) -> bool:
        """Write the status row (``if_changed``: only when it differs from the row last
        written); False when the store cannot take it now (its fault is already in the status
        and the log; the next save tries again)."""
        snapshot = self.status()
        text = status_json(snapshot)
        if if_changed and text == self._saved_status:
            return True
        self._saved_status = None
        try:
            await self.astore.save_status("daemon", snapshot)
        except StoreError:
            return False
        self._saved_status = text
        return True

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The source's loops, the delivery tasks and the status row, until cancelled.

        No signal handling and no API: this is what an embedding program starts, once per
        account, in its own nursery (``run_forever`` adds both around it)."""
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.status_task)
                for output in self.outputs:
                    await nursery.start(output.run)
                if self.alerting is not None:
                    await nursery.start(self.alerting.run)
                for pusher in self.pushers:
                    await nursery.start(pusher.run)
                await nursery.start(self.runtime.run)
                task_status.started()
        finally:
            # the status task's last save may run before the loops have stopped; now every task
            # has finished, so the row `serve` shows says what the machines ended in
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await self.save_status()

    async def status_task(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keeps the status row current: looked at half a second after frames (a burst of
        wakes, one write) and once a minute otherwise; written only when it changed (an idle
        daemon writes nothing)."""
        task_status.started()
        try:
            while True:
                with trio.move_on_after(STATUS_EVERY_S):
                    await self._status_dirty.wait()
                    await trio.sleep(STATUS_SETTLE_S)
                self._status_dirty = trio.Event()
                await self.save_status(if_changed=True)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await self.save_status()


async def watch_signals(
    cancel: trio.CancelScope, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """SIGTERM / SIGINT cancel the daemon's scope; frames in flight finish their transaction."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        task_status.started()
        async for signum in signals:
            log.info("stopping", signal=signal.Signals(signum).name)
            cancel.cancel()
            return


def display_of(settings: ApiSettings) -> Display:
    """The units and thresholds the API shows: the alert rules' own, so the status page's target
    band is the band the alerts judge by."""
    if isinstance(settings, AlertSettings):
        return Display(units=settings.display_units, thresholds=settings.thresholds())
    return Display()


async def serve_api(
    settings: ApiSettings,
    store: str | ReaderStore,
    status: Callable[[], dict[str, Any]],
    *,
    store_fault: Callable[[], str | None] | None = None,
    writer: Any = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """The HTTP API over the store (a SQLite file's path, or a reader the caller owns and
    closes), until cancelled; reports the bound addresses. ``store_fault`` tells it when the
    daemon's writes to the store are failing; ``writer`` (an :class:`api.context.Writer` over
    the daemon's store) lets it take pushed records."""
    from api import create_app, serve
    from store.reader import StoreReader

    bind = check_bind(settings)
    if bind is None or store == ":memory:":
        if bind is not None:
            log.warning("api not started: it reads the store from a file, and this store is in memory")
        task_status.started([])
        return
    reader = StoreReader(store) if isinstance(store, str) else store
    try:
        app = create_app(
            reader, status, settings, store_fault=store_fault, writer=writer, display=display_of(settings)
        )
        await serve(app, bind, task_status=task_status)
    finally:
        if reader is not store:
            reader.close()


async def serve_daemon(
    daemon: Daemon, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """One account's daemon with its API (when its settings bind one), until cancelled."""
    async with trio.open_nursery() as nursery:
        # an account without an API imports none of it (most accounts of --accounts-dir)
        if isinstance(daemon.settings, ApiSettings) and check_bind(daemon.settings) is not None:
            from api.context import Writer

            # pushed records are written by this daemon's own store writer, and wake its outputs
            writer = Writer(daemon.astore, daemon.persisted)
            store: str | ReaderStore = daemon.settings.store_path
            postgres = sys.modules.get("store.postgres")  # loaded only where a store uses it
            if postgres is not None and isinstance(daemon.store, postgres.PostgresStore):
                from store.postgres_reader import PostgresReader

                # this account's rows, over the writer's pool (no connections of its own)
                store = PostgresReader(daemon.store.pool, account=daemon.store.account)
            binds = await nursery.start(
                functools.partial(serve_api, store_fault=daemon.store_fault, writer=writer),
                daemon.settings,
                store,
                daemon.status,
            )
            if binds:
                log.info("api listening", source=daemon.runtime.key, on=binds)
        await nursery.start(daemon.run)
        log.info(
            "running",
            source=daemon.runtime.key,
            loops=[loop.spec.name for loop in daemon.runtime.loops],
            outputs=[output.name for output in daemon.outputs],
        )
        task_status.started()


async def run_forever(daemon: Daemon) -> None:
    """``run``: every loop forever until a signal arrives."""
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            await nursery.start(watch_signals, scope)
            await nursery.start(serve_daemon, daemon)
    log.info("stopped")


async def run_once(daemon: Daemon) -> bool:
    """``once``: one frame per loop, then wait for the outputs to deliver it."""
    ok = await daemon.runtime.run_once()
    if daemon.alerting is not None:
        # what the frames stored, judged now: events for the outputs below to deliver
        await daemon.alerting.evaluate()
    for output in daemon.outputs:
        delivered = await output.deliver_until_idle()
        ok = ok and bool(delivered)
    await daemon.save_status()
    return ok
