"""The package's layers, read from its own imports (every import, at the top or in a function).

Lower layers never reach up: the LoRA math, the base model, the shared state, the adapters, the
prediction engine and training know nothing of HTTP, the command line or the client; the client
talks HTTP only; no module imports itself back through others; no module grows past 400 lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parent.parent / "app"
LOWER = ("lora", "model", "state", "adapters", "engine", "training")
UPPER = ("api", "cli", "client", "console", "deploy", "main", "server")
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    out = {}
    for path in APP.rglob("*.py"):
        parts = path.relative_to(APP.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _imported(name: str, path: Path) -> set[str]:
    """The package's modules that `name` imports (`from x import y` names module x.y when there
    is one, else x itself)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


GRAPH = {name: _imported(name, path) for name, path in MODULES.items()}


def _layer(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def test_the_graph_is_read() -> None:
    # A guard for the tests below: the graph holds what the package is known to import.
    assert "app.lora.ops" in GRAPH["app.lora.stacked"]
    assert "app.cli.base" in GRAPH["app.cli.examples.seed"]
    assert "app.client.wire" in GRAPH["app.client.operations"]


@pytest.mark.parametrize("layer", LOWER)
def test_lower_layers_never_import_upper_ones(layer: str) -> None:
    upward = sorted(
        f"{m} -> {t}"
        for m, targets in GRAPH.items()
        if _layer(m) == layer
        for t in targets
        if _layer(t) in UPPER
    )
    assert upward == []


def test_the_client_imports_nothing_else_of_the_package() -> None:
    outside = sorted(
        f"{m} -> {t}"
        for m, targets in GRAPH.items()
        if _layer(m) == "client"
        for t in targets
        if _layer(t) != "client"
    )
    assert outside == []


def test_there_is_no_import_circle() -> None:
    """No module reaches itself through its imports (Tarjan's strongly connected components)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(GRAPH[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for module in sorted(GRAPH):
        if module not in index:
            visit(module)
    assert circles == []


def test_no_module_is_over_the_size_budget() -> None:
    sizes = {m: len(p.read_text().splitlines()) for m, p in MODULES.items()}
    assert {m: n for m, n in sizes.items() if n > MAX_LINES} == {}
