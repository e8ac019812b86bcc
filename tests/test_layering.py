"""The dependency direction of DESIGN.md ("Layout"), checked on the source text.

Every module of our packages is parsed with :mod:`ast`; every import counts, wherever it
stands (module level, inside a function, under ``TYPE_CHECKING``): a lazy import is still a
dependency, it only hides it from a cycle at start-up.

* the kernel inside connect/ imports only the kernel;
* ``sources``, ``outputs`` and ``store`` import only the kernel (and their own package);
* ``machines`` imports nothing of ours;
* no cycle between top-level packages, the kernel and the rest of connect/ (the shell:
  CLI, daemon, accounts, capture, runtime, settings) counted as two;
* no cycle between modules.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("connect", "machines", "sources", "outputs", "store", "api")

#: what a source, an output or the store may see of connect/ (connect/contract.py's promise)
KERNEL = frozenset(
    {
        "connect",
        "connect.records",
        "connect.errors",
        "connect.contract",
        "connect.clock",
        "connect.httpkit",
        "connect.fields",
        "connect.redact",
        "connect.logs",
        "connect.builder",
        "connect.pushed",
    }
)

#: modules left out by name (none: the benchmark lives in bench/, outside the packages)
EXCLUDED: frozenset[str] = frozenset()

#: layer → layers it may import besides its own; None: anything (its cycles are still checked)
ALLOWED: Mapping[str, frozenset[str] | None] = {
    # the kernel re-exports the machines' one backoff policy to sources (contract.Backoff)
    "kernel": frozenset({"machines"}),
    "machines": frozenset(),
    "sources": frozenset({"kernel"}),
    # an output executes its Delivery machine
    "outputs": frozenset({"kernel", "machines"}),
    "store": frozenset({"kernel"}),
    "api": None,
    "shell": None,
}

#: the store's port (ports and adapters): the interface both store backends implement, the
#: values it speaks in, and its async face over either backend; the outputs deliver through it,
#: never through a backend (store.database, store.postgres)
STORE_PORT: frozenset[str] = frozenset({"store.abc", "store.values", "store.terms", "store.aio"})
#: layers that may import the store's port besides what ALLOWED gives them
PORT_USERS: frozenset[str] = frozenset({"outputs"})

#: known violations, each waiting for a rewrite of its module that is under way elsewhere;
#: an entry that no longer happens fails the test, so the list only shrinks
KNOWN: frozenset[tuple[str, str]] = frozenset()


#: known module cycles, each waiting for the same rewrites: delivery.build_outputs imports the
#: outputs it builds, which import delivery's base class
KNOWN_CYCLES: frozenset[tuple[str, ...]] = frozenset()


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def our_modules() -> dict[str, Path]:
    found = {module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}
    return {name: path for name, path in found.items() if name not in EXCLUDED}


#: every module of ours, excluded ones included: an import of one still resolves to it
ALL_MODULES = frozenset(module_name(p) for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def imported(name: str, path: Path) -> set[str]:
    """The modules of ours ``name`` imports, each resolved to the most specific module."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                # ``from connect import daemon`` imports the module connect.daemon
                full = f"{base}.{alias.name}"
                targets.add(full if full in ALL_MODULES else base)
    ours: set[str] = set()
    for target in targets:
        while target and target not in ALL_MODULES:
            target = target.rpartition(".")[0]
        if target and target != name:
            ours.add(target)
    return ours


def layer(module: str) -> str:
    top = module.partition(".")[0]
    if top == "connect":
        return "kernel" if module in KERNEL else "shell"
    return top


def graph() -> dict[str, set[str]]:
    return {name: imported(name, path) for name, path in our_modules().items()}


def violations(edges: Mapping[str, Iterable[str]]) -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    for module, targets in edges.items():
        allowed = ALLOWED[layer(module)]
        if allowed is None:
            continue
        for target in targets:
            if target in STORE_PORT and layer(module) in PORT_USERS:
                continue
            if layer(target) != layer(module) and layer(target) not in allowed:
                found.add((module, target))
    return found


def cycles(edges: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_every_package_is_parsed() -> None:
    modules = our_modules()
    for package in PACKAGES:
        assert package in modules
    assert KERNEL <= set(modules), "a kernel module was renamed: update KERNEL"


def test_each_layer_imports_only_what_it_may() -> None:
    found = violations(graph())
    unexpected = sorted(found - KNOWN)
    assert not unexpected, "forbidden imports (module → import):\n" + "\n".join(
        f"{a} → {b}" for a, b in unexpected
    )
    fixed = sorted(KNOWN - found)
    assert not fixed, f"no longer violations, remove them from KNOWN: {fixed}"


def test_no_cycle_between_packages() -> None:
    edges: dict[str, set[str]] = {}
    for module, targets in graph().items():
        edges.setdefault(layer(module), set()).update(layer(t) for t in targets if layer(t) != layer(module))
    assert cycles(edges) == []


def test_no_cycle_between_modules() -> None:
    found = {tuple(cycle) for cycle in cycles(graph())}
    assert sorted(found - KNOWN_CYCLES) == []
    fixed = sorted(KNOWN_CYCLES - found)
    assert not fixed, f"no longer cycles, remove them from KNOWN_CYCLES: {fixed}"


@pytest.mark.parametrize(
    ("edges", "expected"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
        ({"a": {"b"}, "b": {"a"}}, [["a", "b"]]),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
    ],
)
def test_cycle_finder(edges: dict[str, set[str]], expected: list[list[str]]) -> None:
    assert cycles(edges) == expected


def test_the_checks_see_forbidden_imports() -> None:
    # a kernel module reaching the shell, a source reaching the store, machines reaching connect/
    edges = {
        "connect.records": {"connect.daemon"},
        "sources.sim": {"store.aio", "connect.records"},
        "machines.timing": {"connect.clock"},
        "connect.daemon": {"store.aio", "outputs.delivery"},
    }
    assert violations(edges) == {
        ("connect.records", "connect.daemon"),
        ("sources.sim", "store.aio"),
        ("machines.timing", "connect.clock"),
    }
