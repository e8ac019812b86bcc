"""The machines as text diagrams (mermaid, markdown tables, graphviz dot)."""

from __future__ import annotations

from statemachine import StateMachine

from machines import (
    CycleMachine,
    DeliveryMachine,
    FetchMachine,
    LeaseMachine,
    PollerMachine,
    SessionMachine,
    SubscriptionMachine,
)

TITLES = (
    ("Session", SessionMachine),
    ("Fetch", FetchMachine),
    ("Cycle", CycleMachine),
    ("Poller", PollerMachine),
    ("Delivery", DeliveryMachine),
    ("Subscription", SubscriptionMachine),
    ("Lease", LeaseMachine),
)


def to_dot(machine: StateMachine, title: str) -> str:
    """Graphviz dot for one machine (python-statemachine's own dot output needs pydot)."""
    lines = [
        f'digraph "{title}" {{',
        "  rankdir=LR;",
        '  node [shape=box, style=rounded, fontname="Helvetica"];',
    ]
    for state in machine.states:
        shape = ", peripheries=2" if state.final else ""
        lines.append(f'  "{state.id}" [label="{state.id}"{shape}];')
        if state.initial:
            lines.append(f'  "__start_{title}" [shape=point]; "__start_{title}" -> "{state.id}";')
    for state in machine.states:
        for transition in state.transitions:
            events = ", ".join(str(event.id) for event in transition.events)
            lines.append(f'  "{state.id}" -> "{transition.target.id}" [label="{events}"];')
    lines.append("}")
    return "\n".join(lines)


def table(machine: type[StateMachine]) -> str:
    """One machine's transitions as a markdown table (state, event, guard, target)."""
    return format(machine(), "md").strip()


def render(fmt: str) -> str:
    """Every machine in ``fmt`` (``mermaid``, ``md`` or ``dot``), each under its name."""
    parts = []
    for title, cls in TITLES:
        machine = cls()
        body = to_dot(machine, title) if fmt == "dot" else format(machine, fmt)
        if fmt == "mermaid":
            parts.append(f"### {title}\n\n```mermaid\n{body.strip()}\n```\n")
        elif fmt == "md":
            parts.append(f"### {title}\n\n{body.strip()}\n")
        else:
            parts.append(f"// {title}\n{body.strip()}\n")
    return "\n".join(parts)
