"""The alerting task: executes one account's alert machine over what the store holds.

Woken after every persisted frame, and otherwise asleep until the deadline the machine names
(staleness, a repeat) — never polling. Each pass runs on the store's worker thread in one
transaction: it reads the account's readings and treatments stored since its last pass (its own
position, kept with the machine's state), feeds the readings to :class:`machines.alerts.
AlertMachine` oldest first, and writes what the machine decided — the events (``glucose:new``,
``treatment:new``, ``episode:changed``, ``alert:raised``, ``alert:cleared``) into the outbox,
the episodes, the state and the position — together, or not at all. A crash between a frame and
its pass loses nothing (the next pass reads from the stored position) and repeats nothing (the
position moves with the events).

Records older than ``CONNECT_EVENTS_MAX_AGE_MINUTES`` when they are evaluated (a backfill) are
not announced as new; alerts follow the machine's stricter rule (``ALARM_TIMEAGO_WARN_MINS``).
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable
from typing import Any, Final

import attrs
import structlog
import trio

from connect.clock import Clock, jitter_rng, wall_ms
from connect.redact import describe_error
from machines.alerts import (
    AlertDecision,
    AlertMachine,
    BadState,
    ChangeEpisode,
    RaiseAlert,
    Reading,
    Thresholds,
)
from machines.timing import Backoff
from outputs.messages import alert_text, level
from store import events as ev
from store.abc import AlertTransaction, WriterStore
from store.aio import AsyncStore

log = structlog.get_logger("connect.alerting")

#: stable event ids: uuid5 in our own namespace
EVENT_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "nightscout-connect:events")
#: rows read per query while a pass catches up
BATCH: Final = 5000
#: a pass that failed (a locked or full disk) is tried again on this ladder
RETRY: Final = Backoff(base=1.0, cap=300.0)
#: entry types announced as glucose:new
GLUCOSE_TYPES: Final = frozenset({"sgv", "mbg"})


def event_id(*parts: object) -> str:
    return str(uuid.uuid5(EVENT_NAMESPACE, "|".join(str(p) for p in parts)))


@attrs.frozen(kw_only=True)
class AlertConfig:
    """What a pass needs to know besides the store."""

    #: the account's key in the store (the rows' ``source``)
    key: str
    #: the account as events name it
    label: str
    thresholds: Thresholds = attrs.field(factory=Thresholds)
    units: str = "mg/dl"
    #: readings and treatments older than this when evaluated are not announced
    news_ms: int = 60 * 60_000
    #: events older than this are dropped from the outbox
    keep_ms: int = 30 * 86_400_000


@attrs.frozen
class PassResult:
    """What a pass did: events written, the machine's next deadline, and a status snapshot."""

    events: int
    deadline: int | None
    status: dict[str, Any]


class _Pass:
    """One evaluation inside one transaction (on the store's worker thread)."""

    def __init__(self, tx: AlertTransaction, config: AlertConfig, now: int) -> None:
        self.tx = tx
        self.config = config
        self.now = now
        #: the events of the pass, appended together at its end (:meth:`write`)
        self.events: list[ev.NewEvent] = []

    def emit(self, name: str, eid: str, data: dict[str, Any]) -> None:
        body = {"event": name, "id": eid, "time": self.now, "account": self.config.label, "data": data}
        self.events.append(ev.NewEvent(eid, name, self.config.label, self.now, ev.body_text(body)))

    def write(self) -> int:
        """The pass's events appended to the outbox; how many were new."""
        return self.tx.add_events(self.events)

    def decided(self, decision: AlertDecision) -> None:
        c = self.config
        if isinstance(decision, ChangeEpisode):
            if decision.ended is not None:
                self.tx.close_episode(c.key, decision.started.start, self.now)
            self.tx.open_episode(c.key, decision.started.kind, decision.started.start, self.now)
            if decision.announce:
                previous = None
                if decision.ended is not None:
                    previous = attrs.asdict(decision.ended)
                self.emit(
                    "episode:changed",
                    event_id(c.key, "episode", decision.started.kind, decision.started.start),
                    {"kind": decision.started.kind, "start": decision.started.start, "previous": previous},
                )
            return
        r = decision.reading
        data: dict[str, Any] = {
            "kind": decision.kind,
            "level": level(decision.kind),
            "sgv": None if r is None else r.sgv,
            "date": None if r is None else r.date,
            "direction": None if r is None else r.direction,
            "threshold": decision.threshold,
            "units": "mg/dL",
            "since": decision.since,
        }
        if isinstance(decision, RaiseAlert):
            name = "alert:raised"
            data["repeat"] = decision.repeat
            eid = event_id(c.key, name, decision.kind, decision.since, decision.repeat)
        else:
            name = "alert:cleared"
            eid = event_id(c.key, name, decision.kind, decision.since)
        _, data["message"] = alert_text({"event": name, "data": data}, now=self.now, units=c.units)
        self.emit(name, eid, data)


def evaluate(store: WriterStore, config: AlertConfig, now: int) -> PassResult:
    """One pass over everything stored since the last one (see the module's doc)."""
    with store.alert_transaction() as tx:
        stored = tx.load_alert_state(config.key)
        try:
            machine = AlertMachine.from_state(stored.state, config.thresholds)
        except BadState as exc:
            log.warning("alert state unreadable; starting afresh", account=config.key, error=str(exc))
            machine = AlertMachine(config.thresholds)
        run = _Pass(tx, config, now)
        entries_seq = stored.entries_seq
        while True:
            rows = tx.new_entries(config.key, entries_seq, BATCH)
            if not rows:
                break
            entries_seq = rows[-1].seq
            for row in sorted(rows, key=lambda r: (r.date, r.seq)):
                if row.type in GLUCOSE_TYPES and now - row.date <= config.news_ms:
                    run.emit(
                        "glucose:new",
                        event_id(config.key, "glucose:new", row.identifier),
                        json.loads(row.text),
                    )
                if row.type == "sgv" and row.sgv is not None:
                    for decision in machine.reading(Reading(row.date, row.sgv, row.direction), now):
                        run.decided(decision)
            if len(rows) < BATCH:
                break  # the last of them (no need to ask again to hear "none")
        treatments_seq = stored.treatments_seq
        while True:
            rows = tx.new_treatments(config.key, treatments_seq, BATCH)
            if not rows:
                break
            treatments_seq = rows[-1].seq
            for row in rows:
                if now - row.date <= config.news_ms:
                    run.emit(
                        "treatment:new",
                        event_id(config.key, "treatment:new", row.identifier),
                        json.loads(row.text),
                    )
            if len(rows) < BATCH:
                break
        for decision in machine.tick(now):
            run.decided(decision)
        episode = machine.episode
        if episode is not None:
            tx.update_open_episode(config.key, episode.sgv_min, episode.sgv_max, episode.readings, now)
        added = run.write()
        tx.save_alert_state(config.key, ev.AlertState(machine.to_state(), entries_seq, treatments_seq))
        tx.prune_events(now - config.keep_ms)
    status = {
        "episode": machine.episode_kind,
        "episode_start": None if episode is None else episode.start,
        "raised": sorted(machine.raised),
        "last_reading": None if machine.last is None else machine.last.date,
    }
    return PassResult(added, machine.deadline(now), status)


class Alerting:
    """The trio side: run passes when woken and at the machine's deadlines."""

    def __init__(
        self,
        astore: AsyncStore,
        config: AlertConfig,
        *,
        clock: Clock = wall_ms,
        rng: random.Random | None = None,
        on_events: Callable[[], None] | None = None,
    ) -> None:
        self.astore = astore
        self.config = config
        self.clock = clock
        self.rng = rng or jitter_rng()
        #: called after a pass wrote events (the daemon wakes the outputs)
        self.on_events = on_events
        self._wakeup = trio.Event()
        self._deadline: int | None = None
        self._failures = 0
        self._events = 0
        self._passes = 0
        self._last_error: str | None = None
        self._status: dict[str, Any] = {}

    def wake(self) -> None:
        """A frame was persisted: evaluate what it stored."""
        self._wakeup.set()

    async def evaluate(self) -> PassResult:
        """One pass now (``once`` runs exactly one after its frames)."""
        result: PassResult = await self.astore.call_background(
            evaluate, self.astore.store, self.config, self.clock()
        )
        self._passes += 1
        self._events += result.events
        self._deadline = result.deadline
        self._status = result.status
        self._failures = 0
        self._last_error = None
        if result.events:
            log.info("events", account=self.config.key, written=result.events, **result.status)
            if self.on_events is not None:
                self.on_events()
        return result

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Passes until cancelled: after every wake, and at the deadline the machine named."""
        task_status.started()
        while True:
            self._wakeup = trio.Event()
            until: int | None
            try:
                until = (await self.evaluate()).deadline
            except Exception as exc:  # one failed pass must not stop the daemon
                self._failures += 1
                self._last_error = describe_error(exc) or type(exc).__name__
                until = self.clock() + int(RETRY.delay(self._failures, self.rng.random()) * 1000)
                log.warning("alert evaluation failed", account=self.config.key, error=self._last_error)
            if until is None:
                await self._wakeup.wait()
            else:
                with trio.move_on_after(max(0.0, (until - self.clock()) / 1000.0)):
                    await self._wakeup.wait()

    def status(self) -> dict[str, Any]:
        return {
            "account": self.config.label,
            **self._status,
            "next_check": self._deadline,
            "passes": self._passes,
            "events": self._events,
            "failures": self._failures,
            "last_error": self._last_error,
        }
