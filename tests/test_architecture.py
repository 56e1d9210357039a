"""The shape of app/, read from the source: no package imports another in a circle, and the
sender knows no domain (it sees emails only through app.outbox's kinds)."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

APP = Path(__file__).resolve().parent.parent / "app"
DOMAINS = {
    "subscriptions",
    "subscribers",
    "digests",
    "articles",
    "bounces",
    "schedules",
    "alerts",
    "audit",
}
# The machinery every domain may use; it must not reach back into a domain.
MACHINERY = {"outbox", "mail", "worker"}


def _room(module: str) -> str | None:
    """`app.outbox.queue` -> "outbox"; `app.config` -> "config"; None outside app."""
    parts = module.split(".")
    if parts[0] != "app" or len(parts) < 2:
        return None
    return parts[1]


def _imports(path: Path) -> set[str]:
    """Every `app...` module imported anywhere in the file (functions included)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m == "app" or m.startswith("app.")}


def room_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for path in APP.rglob("*.py"):
        relative = path.relative_to(APP.parent).with_suffix("")
        own = _room(".".join(relative.parts))
        if own is None:
            continue
        graph[own]
        for module in _imports(path):
            other = _room(module)
            if other is not None and other != own and (APP / other).exists():
                graph[own].add(other)
            elif other is not None and other != own and (APP / f"{other}.py").exists():
                graph[own].add(other)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one room (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_package_imports_another_in_a_circle() -> None:
    assert _cycles(room_graph()) == []


def test_the_machinery_imports_no_domain() -> None:
    graph = room_graph()
    for room in MACHINERY:
        assert not graph[room] & DOMAINS, f"app/{room} imports {sorted(graph[room] & DOMAINS)}"


def test_the_worker_imports_only_outbox_mail_config_and_metrics() -> None:
    assert room_graph()["worker"] <= {"outbox", "mail", "config", "metrics", "models"}


def test_the_cycle_finder_finds_a_cycle() -> None:
    # The checks above are only as good as this: a circle of three rooms is found.
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
