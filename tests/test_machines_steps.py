"""The machines' short road for plain transitions does what the library's engine does: the same
callbacks in the same order, the same state, the same answer, the same errors."""

from __future__ import annotations

from typing import Any

import pytest
from statemachine import State, StateMachine

from machines import ALL_MACHINES, FetchMachine
from machines.base import Machine


def _toy(base: type[StateMachine]) -> Any:
    class Toy(base):  # type: ignore[valid-type,misc]
        a = State(initial=True)
        b = State()
        c = State()
        end = State(final=True)

        go = a.to(b) | c.to(b)
        on_b = b.to(c)
        guarded = b.to(a, cond="allowed") | b.to(c, unless="allowed")
        finish = c.to(end)
        chain = a.to(c)

        def __init__(self) -> None:
            self.log: list[str] = []
            self.allowed = True
            self.boom = False
            super().__init__()

        def before_go(self, n: int = 0) -> str:
            self.log.append(f"before_go {n} in {self.current_state_value}")
            return "before"

        def on_exit_a(self) -> None:
            self.log.append("exit a")

        def on_go(self, n: int = 0) -> str:
            if self.boom:
                raise ValueError("boom")
            self.log.append(f"on_go {n} in {self.current_state_value}")
            return "on"

        def on_enter_b(self) -> None:
            self.log.append(f"enter b in {self.current_state_value}")

        def after_go(self, n: int = 0) -> None:
            self.log.append(f"after_go {n} in {self.current_state_value}")

        def on_chain(self) -> None:
            self.send("go", n=7)  # sent from a callback: runs once this step is over
            self.log.append("chain")

        def on_enter_c(self, source: Any = None) -> None:  # asks for an injected argument
            self.log.append(f"enter c from {source.id if source else None}")

    return Toy()


def _run(base: type[StateMachine], script: list[tuple[str, dict[str, Any]]]) -> tuple[list[Any], Any]:
    toy = _toy(base)
    answers: list[Any] = []
    for event, facts in script:
        if event == "boom":
            toy.boom = True
            continue
        try:
            answers.append(
                getattr(toy, event)(**facts) if facts.pop("method", False) else toy.send(event, **facts)
            )
        except Exception as exc:  # noqa: BLE001 — the error itself is what is compared
            answers.append(f"{type(exc).__name__}: {exc}")
        answers.append(toy.current_state_value)
    return answers, toy.log


SCRIPT: list[tuple[str, dict[str, Any]]] = [
    ("go", {"n": 1}),
    ("on_b", {}),
    ("go", {"n": 2, "method": True}),
    ("guarded", {}),
    ("chain", {}),
    ("nope", {}),
    ("on_b", {"unused": 1}),
    ("go", {}),
    ("on_b", {}),
    ("boom", {}),
    ("go", {}),
    ("finish", {}),
]


def test_a_plain_step_matches_the_library_engine() -> None:
    assert _run(Machine, [(e, dict(f)) for e, f in SCRIPT]) == _run(
        StateMachine, [(e, dict(f)) for e, f in SCRIPT]
    )


def test_a_failed_step_leaves_the_state_where_it_was() -> None:
    toy = _toy(Machine)
    toy.boom = True
    with pytest.raises(ValueError, match="boom"):
        toy.send("go")
    assert toy.current_state_value == "a"
    assert toy.log == ["before_go 0 in a", "exit a"]


def test_a_listener_sees_every_transition() -> None:
    seen: list[str] = []

    class Watch:
        def after_transition(self, event: str, source: Any, target: Any) -> None:
            seen.append(f"{event}: {source.id} -> {target.id}")

    machine = FetchMachine()
    machine.add_listener(Watch())
    machine.begin()
    machine.session_ok()
    assert seen == ["start: idle -> auth", "session_ok: auth -> determine_gaps"]


@pytest.mark.parametrize("machine_class", ALL_MACHINES)
def test_every_machine_takes_the_short_road(machine_class: type[StateMachine]) -> None:
    assert issubclass(machine_class, Machine)


def test_a_start_with_nothing_to_run_is_the_librarys_start() -> None:
    """A machine whose initial state runs nothing on entry is put in it directly; one whose
    initial state has an entry callback (or a listener) is started by the library, which runs
    it, exactly as a plain StateMachine does."""
    for base in (Machine, StateMachine):
        quiet = _toy(base)
        assert (quiet.current_state_value, quiet.configuration_values, quiet.model.state) == ("a", {"a"}, "a")
        assert quiet.a.is_active and quiet.log == []

    def entering(base: type[StateMachine]) -> Any:
        class Loud(base):  # type: ignore[valid-type,misc]
            a = State(initial=True)
            b = State()
            go = a.to(b) | b.to(a)

            def __init__(self) -> None:
                self.log: list[str] = []
                super().__init__()

            def on_enter_a(self) -> None:
                self.log.append("enter a")

        return Loud()

    assert entering(Machine).log == entering(StateMachine).log == ["enter a"]


@pytest.mark.parametrize("machine_class", ALL_MACHINES)
def test_every_machine_starts_where_the_library_starts_it(
    machine_class: type[StateMachine], monkeypatch: pytest.MonkeyPatch
) -> None:
    quick = machine_class()
    monkeypatch.setattr(Machine, "_quiet_start", lambda self: False)
    library = machine_class()
    assert quick.current_state_value == library.current_state_value
    assert quick.configuration_values == library.configuration_values
    assert vars(quick.model) == vars(library.model)
