"""``/metrics``: Prometheus text computed at scrape time from the status snapshot and the store.

Each app has its own :class:`CollectorRegistry`, so several apps (tests, several accounts) never
share or double-register metrics, and nothing is counted twice: the figures are the runtime's own
counters and the store's own rows, read when Prometheus asks.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from starlette.concurrency import run_in_threadpool

from api import status as st
from connect.records import COLLECTIONS
from connect.redact import describe_error
from store.abc import ReaderStore

log = structlog.get_logger("api.metrics")

PREFIX = "nightscout_connect"

#: the runtime status a scrape took on the event loop (the machines' status is read only there),
#: for the collector on the worker thread
_taken: ContextVar[Callable[[], Mapping[str, Any]] | None] = ContextVar("api_status_snapshot", default=None)


class ConnectCollector:
    """A custom collector: no state of its own, everything read per scrape."""

    def __init__(self, reader: ReaderStore, status: Callable[[], Mapping[str, Any]]) -> None:
        self.reader = reader
        self.status = status

    def describe(self) -> list[Metric]:
        # an empty description keeps the registry from calling collect() at registration
        return []

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(f"{PREFIX}_status_up", "1 when the runtime's status could be read")
        snapshot: Mapping[str, Any] | None
        try:
            snapshot = self.status()
        except Exception as exc:  # a broken status must not break the scrape
            log.warning("status unavailable", error=describe_error(exc))
            snapshot = None
        up.add_metric([], 0 if snapshot is None else 1)
        yield up
        if snapshot is not None:
            yield from self._runtime(snapshot)
        yield from self._store([] if snapshot is None else [str(o["name"]) for o in st.outputs(snapshot)])

    def _runtime(self, snapshot: Mapping[str, Any]) -> Iterator[Metric]:

        frames = CounterMetricFamily(
            f"{PREFIX}_frames", "frames finished per loop, by result", labels=["source", "loop", "result"]
        )
        missing = GaugeMetricFamily(
            f"{PREFIX}_frames_missing", "frames in a row that failed, per loop", labels=["source", "loop"]
        )
        written = CounterMetricFamily(
            f"{PREFIX}_records_written",
            "records written (new or changed) per loop",
            labels=["source", "loop"],
        )
        last_success = GaugeMetricFamily(
            f"{PREFIX}_last_success_timestamp_seconds",
            "time of each loop's last successful frame",
            labels=["source", "loop"],
        )
        loop_state = GaugeMetricFamily(
            f"{PREFIX}_loop_state", "1 for each loop's current state", labels=["source", "loop", "state"]
        )
        for view in st.loops(snapshot):
            labels = [view.source, view.name]
            loop_state.add_metric([*labels, view.state], 1)
            frames.add_metric([*labels, "ok"], view.count("frames_ok"))
            frames.add_metric([*labels, "failed"], view.count("frames_failed"))
            missing.add_metric(labels, view.count("frames_missing"))
            written.add_metric(labels, view.count("records_written"))
            success = st.number(view.data.get("last_success"))
            if success is not None:
                last_success.add_metric(labels, success / 1000)
        yield from (frames, missing, written, last_success, loop_state)

        logins = CounterMetricFamily(f"{PREFIX}_logins", "vendor logins per source", labels=["source"])
        rejections = CounterMetricFamily(
            f"{PREFIX}_login_rejections", "logins the vendor refused, per source", labels=["source"]
        )
        session_failures = CounterMetricFamily(
            f"{PREFIX}_session_failures", "failed login attempts per source", labels=["source"]
        )
        session_state = GaugeMetricFamily(
            f"{PREFIX}_session_state", "1 for each source's session state", labels=["source", "state"]
        )
        for source in st.sources(snapshot):
            session = source.get("session")
            if not isinstance(session, Mapping):
                continue
            name = st.text(source.get("source"), "unknown")
            logins.add_metric([name], st.number(session.get("logins")) or 0)
            rejections.add_metric([name], st.number(session.get("rejections")) or 0)
            session_failures.add_metric([name], st.number(session.get("failures")) or 0)
            session_state.add_metric([name, st.text(session.get("state"), "unknown")], 1)
        yield from (logins, rejections, session_failures, session_state)

        delivered = CounterMetricFamily(
            f"{PREFIX}_delivered", "records delivered per output", labels=["output"]
        )
        failures = CounterMetricFamily(
            f"{PREFIX}_delivery_failures", "failed delivery attempts per output", labels=["output"]
        )
        output_state = GaugeMetricFamily(
            f"{PREFIX}_output_state", "1 for each output's current state", labels=["output", "state"]
        )
        for output in st.outputs(snapshot):
            name = str(output["name"])
            delivered.add_metric([name], st.number(output.get("delivered")) or 0)
            failures.add_metric([name], st.number(output.get("failures")) or 0)
            output_state.add_metric([name, st.text(output.get("state"), "unknown")], 1)
        yield from (delivered, failures, output_state)

    def _store(self, output_names: list[str]) -> Iterator[Metric]:
        up = GaugeMetricFamily(f"{PREFIX}_store_up", "1 when the store could be read")
        try:
            collections = self.reader.collections()
            names = sorted({*output_names, *self.reader.outputs()})
            lag = self.reader.lag(names)
            rejected = self.reader.rejected()
        except sqlite3.Error as exc:
            log.warning("store unavailable", error=describe_error(exc))
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        stored = GaugeMetricFamily(f"{PREFIX}_records_stored", "records in the store", labels=["collection"])
        newest = GaugeMetricFamily(
            f"{PREFIX}_newest_record_timestamp_seconds",
            "time of the newest stored record",
            labels=["collection"],
        )
        for name, info in collections.items():
            stored.add_metric([name], info["records"] or 0)
            if info["newest"] is not None:
                newest.add_metric([name], info["newest"] / 1000)
        lag_metric = GaugeMetricFamily(
            f"{PREFIX}_delivery_lag_records",
            "stored records an output has not delivered yet",
            labels=["output"],
        )
        for output, per in lag.items():
            lag_metric.add_metric([output], sum(per.values()))
        set_aside = GaugeMetricFamily(
            f"{PREFIX}_rejected_records",
            "records the far side refused for good and the output set aside (`nightscout-connect rejected`)",
            labels=["output", "collection"],
        )
        counts: dict[tuple[str, str], int] = {(name, c): 0 for name in names for c in COLLECTIONS}
        for group in rejected:
            if not group.queued:  # a queued record is counted in the lag until it goes out
                key = (group.output, group.collection)
                counts[key] = counts.get(key, 0) + group.records
        for (output, collection), records in sorted(counts.items()):
            set_aside.add_metric([output, collection], records)
        yield from (stored, newest, lag_metric, set_aside)


def make_registry(reader: ReaderStore, status: Callable[[], Mapping[str, Any]]) -> CollectorRegistry:
    """A registry over ``reader`` and ``status``; inside :func:`scrape`, the snapshot handed to it
    stands in for ``status``."""

    def snapshot() -> Mapping[str, Any]:
        taken = _taken.get()
        return taken() if taken is not None else status()

    registry = CollectorRegistry(auto_describe=False)
    registry.register(ConnectCollector(reader, snapshot))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)


async def scrape(registry: CollectorRegistry, snapshot: Mapping[str, Any] | None) -> bytes:
    """The registry's text, rendered on a worker thread (it reads the store) from ``snapshot``,
    the status taken on the event loop; ``None`` scrapes as a status that could not be read."""

    def taken() -> Mapping[str, Any]:
        if snapshot is None:
            raise RuntimeError("runtime status unavailable")
        return snapshot

    # the worker thread runs in a copy of this context, so the collector sees the snapshot
    token = _taken.set(taken)
    try:
        return await run_in_threadpool(render, registry)
    finally:
        _taken.reset(token)
