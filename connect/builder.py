"""The builder: a source's ``generate_driver`` declares its session and loops here.

``build()`` freezes the declarations into a :class:`SourcePlan` the runtime executes: one
shared session (or none) and one Cycle per loop, under one Poller.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import attrs

from connect.contract import (
    AlignSchedule,
    Authenticate,
    Authorize,
    Backoff,
    Fetch,
    LoginT,
    RawT,
    Refresh,
    Transform,
)
from connect.errors import ConfigError


@attrs.frozen(kw_only=True)
class SessionSpec:
    # the builder checked that authorize takes what authenticate gives; the runtime only
    # passes one to the other
    authenticate: Authenticate[Any]
    authorize: Authorize[Any]
    refresh: Refresh | None = None
    refresh_after: timedelta | None = None
    expire_after: timedelta | None = None


@attrs.frozen(kw_only=True)
class LoopSpec:
    name: str
    # the builder checked that transform takes what fetch gives; the runtime only passes it on
    fetch: Fetch[Any]
    transform: Transform[Any]
    collections: tuple[str, ...]
    align_schedule: AlignSchedule | None
    expected_interval: timedelta
    frame_retries: int
    frame_backoff: Backoff
    cycle_backoff: Backoff
    #: field → value pairs that pick this loop's own records out of a Nightscout site's
    #: (``find[device]=share2``): gap analysis asks where *this* loop left off, not where the
    #: newest record of any uploader is. Empty: the site's newest record of the collection.
    site_filter: tuple[tuple[str, str], ...] = ()


@attrs.frozen(kw_only=True)
class SourcePlan:
    """Everything the runtime needs to run one source for one account."""

    source: str
    session: SessionSpec | None
    loops: tuple[LoopSpec, ...]


class Builder:
    """Collects one source's session and loops; used once per source instance."""

    def __init__(self, source: str) -> None:
        self.source = source
        self._session: SessionSpec | None = None
        self._loops: list[LoopSpec] = []

    def support_session(
        self,
        *,
        authenticate: Authenticate[LoginT],
        authorize: Authorize[LoginT],
        refresh: Refresh | None = None,
        refresh_after: timedelta | None = None,
        expire_after: timedelta | None = None,
    ) -> None:
        if self._session is not None:
            raise ConfigError(f"{self.source}: support_session called twice")
        if refresh_after is not None and refresh is None:
            # renewing means refreshing; a session that must simply end after a while is what
            # expire_after says (the runtime then logs in again)
            raise ConfigError(
                f"{self.source}: support_session(refresh_after=…) needs a refresh coroutine; "
                "use expire_after to log in again after a time"
            )
        for name, value in (("refresh_after", refresh_after), ("expire_after", expire_after)):
            if value is not None and value <= timedelta(0):
                raise ConfigError(f"{self.source}: support_session({name}=…) must be positive")
        self._session = SessionSpec(
            authenticate=authenticate,
            authorize=authorize,
            refresh=refresh,
            refresh_after=refresh_after,
            expire_after=expire_after,
        )

    def register_loop(
        self,
        name: str,
        *,
        fetch: Fetch[RawT],
        transform: Transform[RawT],
        collections: tuple[str, ...] = ("entries",),
        align_schedule: AlignSchedule | None = None,
        expected_interval: timedelta = timedelta(minutes=5),
        frame_retries: int = 2,
        frame_backoff: Backoff = Backoff(base=2.0, cap=60.0),
        cycle_backoff: Backoff = Backoff(base=30.0, cap=1800.0),
        site_filter: Mapping[str, str] | None = None,
    ) -> None:
        if any(loop.name == name for loop in self._loops):
            raise ConfigError(f"{self.source}: loop {name!r} registered twice")
        if frame_retries < 0 or expected_interval <= timedelta(0):
            raise ConfigError(f"{self.source}: loop {name!r} has an invalid schedule")
        self._loops.append(
            LoopSpec(
                name=name,
                fetch=fetch,
                transform=transform,
                collections=collections,
                align_schedule=align_schedule,
                expected_interval=expected_interval,
                frame_retries=frame_retries,
                frame_backoff=frame_backoff,
                cycle_backoff=cycle_backoff,
                site_filter=tuple(sorted((site_filter or {}).items())),
            )
        )

    def build(self, *, loops_required: bool = True) -> SourcePlan:
        """The plan; a source that polls must have registered a loop (``none`` registers none)."""
        if loops_required and not self._loops:
            raise ConfigError(f"{self.source}: no loop registered")
        return SourcePlan(source=self.source, session=self._session, loops=tuple(self._loops))
