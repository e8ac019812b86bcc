"""The machines' common base: python-statemachine's ``StateMachine``, stepping plain transitions
without the library's general engine.

The library's engine is a full statechart interpreter: every event is queued, then a macrostep
looks for eventless transitions, the entry and exit sets are computed over the state tree, and an
``EventData`` is built for each callback group — about 150 µs an event here, for machines that
are flat and mostly unguarded. An event (sent, or called as the event's method) takes a shorter road when the answer cannot
differ: from the current state the event has exactly one transition, to another state that is
not final, with no guard, validator or ``prepare_event`` callback, no listener attached (the
debug transition log is one), and every callback a method of the machine that asks for none of
the library's injected arguments (``source``, ``event_data`` …). It then calls the callbacks the
library registered, in the order the library calls them for a ``StateMachine`` (before, exit,
on, the state change, enter, after) and, on an error, puts the state back as the library does.
Anything else goes to the library's engine. The states, transitions, guards, diagrams and
listeners all stay the library's.

Starting takes a shorter road for the same reason: a machine whose initial state is flat, not
final, has no eventless transition and nothing registered to run on entering it, started with
no listener, is put in that state directly (the library's documented low-level
``current_state_value``) instead of through the engine's initial macrostep, which nothing
would observe. A thousand accounts make three machines each, and that macrostep was two
fifths of making one.
"""

from __future__ import annotations

import inspect
from typing import Any

from statemachine import StateMachine
from statemachine.event_data import TriggerData
from statemachine.model import Model

#: the arguments the library injects into callbacks: a callback asking for one of them is
#: stepped by the library, which builds them
INJECTED = frozenset(
    {
        "event_data",
        "machine",
        "model",
        "event",
        "source",
        "state",
        "target",
        "transition",
        "previous_configuration",
        "new_configuration",
    }
)

#: a step: the target's value, then the registered callback groups in the library's order
_Plan = tuple[Any, str, str, str, str, str]
#: the plans of each class, by (state value, event): made once per process, not per machine
#: (an account's machines would otherwise make them again on each one's first frame)
_CLASS_PLANS: dict[type[StateMachine], dict[tuple[Any, str], _Plan | None]] = {}


class Machine(StateMachine):
    """A ``StateMachine`` whose plain transitions are stepped from a plan made once per class,
    state and event (see the module's note); ``send`` and the event methods behave as the
    library's, and both take the plan."""

    def _get_engine(self) -> Any:
        # called by the library's __init__ just before it starts the engine: a machine already
        # in its initial state is not activated again (see the module's note)
        engine = super()._get_engine()
        if self._quiet_start():
            initial = type(self).initial_state
            assert initial is not None
            self.current_state_value = initial.value
        return engine

    def _quiet_start(self) -> bool:
        """Whether entering the initial state would run nothing but the entering itself."""
        initial = type(self).initial_state
        if initial is None or self._listeners or self._callbacks.has_async_callbacks:
            return False
        if self.current_state_value is not None or self.start_configuration_values not in (
            [],
            [initial.value],
        ):
            return False
        if not initial.is_atomic or initial.parent is not None or initial.final:
            return False
        if any(t.is_eventless for t in initial.transitions):
            return False
        registry = self._callbacks
        return not any(
            key in registry and list(registry[key]) for key in (initial.enter.key, initial.invoke.key)
        )

    def _put_nonblocking(self, trigger_data: TriggerData, internal: bool = False) -> None:
        # every event passes here, from ``send`` and from the event's own method alike; a plain
        # step is kept for :meth:`_processing_loop`, which the library calls next
        event = trigger_data.event
        if (
            event is not None
            and not internal
            and not trigger_data.args
            and trigger_data.send_id is None
            and not event.delay
            and self._plans_allowed(trigger_data.kwargs)
        ):
            key = (self.current_state_value, str(event))
            plans = self._plans()
            plan = plans.get(key, False)
            if plan is False:
                plan = plans[key] = self._plan(str(event))
            if plan is not None:
                self.__dict__["_due_step"] = (plan, str(event), trigger_data.kwargs)
                return
        super()._put_nonblocking(trigger_data, internal)

    def _processing_loop(self, caller_future: Any | None = None) -> Any:
        due = self.__dict__.pop("_due_step", None)
        if due is not None:
            return self._step(*due)
        return super()._processing_loop(caller_future)

    def _plans(self) -> dict[tuple[Any, str], _Plan | None]:
        """The plans made so far: the class's, shared by its machines, when the callbacks can
        only be the class's own (the library's bare default model); else this machine's."""
        if type(self.model) is Model:
            return _CLASS_PLANS.setdefault(type(self), {})
        plans: dict[tuple[Any, str], _Plan | None] = self.__dict__.setdefault("_step_plans", {})
        return plans

    def _plans_allowed(self, kwargs: dict[str, Any]) -> bool:
        engine = self._engine
        return (
            not self._listeners
            and not self._callbacks.has_async_callbacks
            and engine.running
            and not engine._processing.locked()  # a callback's send joins the library's queue
            and engine.external_queue.is_empty()
            and not INJECTED.intersection(kwargs)
        )

    def _plan(self, event: str) -> _Plan | None:
        """The step for ``event`` from the current state, or None when the library must take it."""
        source = self.states_map.get(self.current_state_value)
        if source is None or not source.is_atomic or source.parent is not None:
            return None
        candidates = [t for t in source.transitions if t.match(event)]
        if len(candidates) != 1:
            return None
        transition = candidates[0]
        target = transition.target
        if (
            transition.internal
            or transition.is_self
            or transition.is_eventless
            or len(transition.targets) != 1
            or target is None
            or target.final
            or not target.is_atomic
            or target.parent is not None
            or list(transition.cond)
            or list(transition.validators)
        ):
            return None
        registry = self._callbacks
        if self.prepare.key in registry and list(registry[self.prepare.key]):
            return None
        groups = (
            transition.before.key,
            source.exit.key,
            transition.on.key,
            target.enter.key,
            transition.after.key,
        )
        for group in groups:
            if group in registry and not all(self._plain(c.meta.func) for c in registry[group]):
                return None
        return (target.value, *groups)

    def _plain(self, func: Any) -> bool:
        """A callback the plan can call: one of this machine's methods, asking for no injected
        argument (an event's own check that it is the event sent is one too: it asks for
        ``event``, which the plan passes)."""
        if not isinstance(func, str):
            return False
        method = getattr(self, func, None)
        if not inspect.ismethod(method) or method.__self__ is not self:
            return False
        parameters = inspect.signature(method).parameters.values()
        return not any(p.kind is p.VAR_KEYWORD or p.name in INJECTED for p in parameters)

    def _step(self, plan: _Plan, event: str, facts: dict[str, Any]) -> Any:
        target, before, exit_, on, enter, after = plan
        registry = self._callbacks
        # the registered callbacks filter their arguments by signature; ``event`` is for the
        # condition the library puts on ``on_<event>`` (that it is the event being sent)
        kwargs = {**facts, "event": event}
        engine = self._engine
        engine._processing.acquire()
        previous = self.current_state_value
        try:
            try:
                results = registry.call(before, **kwargs)
                registry.call(exit_, **kwargs)
                results += registry.call(on, **kwargs)
                self.current_state_value = target
                registry.call(enter, **kwargs)
            except Exception:
                self.current_state_value = previous
                raise
            registry.call(after, **kwargs)
        except Exception:
            engine.clear()  # as the library does: what a failed step queued is not run
            raise
        finally:
            engine._processing.release()
        if not engine.external_queue.is_empty():
            engine.processing_loop()  # events a callback sent, in the order it sent them
        if not results:
            return None
        return results[0] if len(results) == 1 else results
