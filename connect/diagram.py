"""The machines as text diagrams (mermaid, markdown tables, graphviz dot)."""

from __future__ import annotations

from machines import CycleMachine, FetchMachine, PollerMachine, SessionMachine

TITLES = (
    ("Session", SessionMachine),
    ("Fetch", FetchMachine),
    ("Cycle", CycleMachine),
    ("Poller", PollerMachine),
)


def render(fmt: str) -> str:
    """Every machine in ``fmt`` (``mermaid``, ``md`` or ``dot``), each under its name."""
    parts = []
    for title, cls in TITLES:
        machine = cls()
        body = format(machine, fmt)
        if fmt == "mermaid":
            parts.append(f"### {title}\n\n```mermaid\n{body.strip()}\n```\n")
        elif fmt == "md":
            parts.append(f"### {title}\n\n{body.strip()}\n")
        else:
            parts.append(f"// {title}\n{body.strip()}\n")
    return "\n".join(parts)
