"""The package's layers, read from its own code (every import, at the top or in a function).

Lower layers never reach up: the LoRA math, the base model, the shared state, the adapters, the
prediction engine and training know nothing of the families, HTTP, the command line or the
client; a family never imports another; the client talks HTTP only; the objects of a process
are built by the composition root; only the settings and start-up read the environment; no
module imports itself back through others; no module grows past 400 lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from support import tree

APP = Path(__file__).resolve().parent.parent / "app"
LOWER = ("lora", "model", "state", "adapters", "engine", "training")
UPPER = (
    "families", "api", "cli", "client", "console", "deploy", "main", "server", "services", "worker"
)  # fmt: skip
FAMILIES = ("mlp", "encoder", "decoder")
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
    assert "app.families.decoder.family" in GRAPH["app.families.catalog"]
    assert "app.training.family" in GRAPH["app.training.worker"]


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


def _family(module: str) -> str | None:
    parts = module.split(".")
    return parts[2] if len(parts) > 2 and parts[1] == "families" and parts[2] in FAMILIES else None


def test_a_family_never_imports_another() -> None:
    crossed = sorted(
        f"{m} -> {t}"
        for m, targets in GRAPH.items()
        if _family(m) is not None
        for t in targets
        if _family(t) not in (None, _family(m))
    )
    assert crossed == []


# The long-lived objects of a process, and where they may be built: the composition root, the
# app, the worker and the Ray deployments; a family builds its own dataset store and engine.
BUILT = {
    "AdapterRegistry", "Batcher", "ComputeThread", "Database", "DirectRunner", "GenerationEngine",
    "JobStore", "ObjectStore", "Predictor", "Projects", "TrainingService", "TrainingWorker",
}  # fmt: skip
BUILDERS = ("app.services", "app.main", "app.worker", "app.deploy.")


def _calls(path: Path) -> set[str]:
    return {
        node.func.id
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    }


def test_only_the_composition_root_builds_a_processs_objects() -> None:
    built = sorted(
        f"{m} builds {name}"
        for m, path in MODULES.items()
        if not m.startswith(BUILDERS) and not m.endswith(".family")
        for name in _calls(path) & BUILT
    )
    # Each owner's own helpers: the registry opens its store (`local`), the worker its jobs.
    assert built == [
        "app.adapters.reads builds Database",
        "app.adapters.reads builds ObjectStore",
        "app.training.service builds TrainingWorker",
    ]


def _reads_environment(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and node.attr == "getenv":
            return True
        if isinstance(node, ast.Attribute) and node.attr == "get":
            value = node.value
            if isinstance(value, ast.Attribute) and value.attr == "environ":
                return True
        if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load):
            value = node.value
            if isinstance(value, ast.Attribute) and value.attr == "environ":
                return True
    return False


def test_only_the_settings_and_start_up_read_the_environment() -> None:
    readers = sorted(m for m, path in MODULES.items() if _reads_environment(path))
    assert readers and all(m == "app.settings" or m.startswith("app.startup") for m in readers)


def test_the_design_notes_hold_the_current_layer_table() -> None:
    notes = (APP.parent / "docs" / "design.md").read_text()
    assert tree.in_design_notes(notes) == tree.table(), "run: python -m support.tree --write"
