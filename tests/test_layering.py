"""The package layout is kept, not just described (README "Layout", docs/architecture.md).

Reads every module of ``registry/`` and ``drift/`` with :mod:`ast` (imports inside functions
and under ``TYPE_CHECKING`` included) and fails on an import cycle, on an import "upwards"
(see :data:`RANK`), on ``registry -> drift``, on typer outside ``drift/cli/`` and on the pure
``drift.measure`` importing MLflow.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: A module may import modules of its own rank or lower, never higher.
RANK = {
    "registry": 0,
    "drift": 1,  # drift/__init__.py (the version) and drift/provenance.py
    "drift.provenance": 1,
    "drift.measure": 2,
    "drift.cohort": 3,
    "drift.gate": 4,
    "drift.normative": 5,
    "drift.service": 6,
    "drift.cli": 7,
}
MAX_LINES = 900


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found = {}
    for top in ("registry", "drift"):
        for path in sorted((ROOT / top).rglob("*.py")):
            found[_module_name(path)] = path
    return found


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The project module an imported name belongs to (longest known prefix), or None."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(module: str, path: Path) -> set[str]:
    """Every absolute name imported anywhere in the module (``from a.b import c`` gives
    ``a.b.c`` and ``a.b``: c may be a submodule)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _project_graph() -> dict[str, set[str]]:
    graph = {}
    for module, path in MODULES.items():
        targets = {_resolve(n) for n in _imports(module, path)}
        graph[module] = {t for t in targets if t is not None and t != module}
    return graph


GRAPH = _project_graph()


def _rank(module: str) -> int:
    best = None
    for prefix in RANK:
        if (module == prefix or module.startswith(prefix + ".")) and (
            best is None or len(prefix) > len(best)
        ):
            best = prefix
    assert best is not None, f"{module} is in no layer of RANK: add it"
    return RANK[best]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _packages_of(module: str) -> set[str]:
    """A module and every package above it (importing ``a.b.c`` runs ``a/__init__``, ``a.b``)."""
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


def test_no_import_cycle():
    assert _cycles(GRAPH) == []


def test_no_cycle_detected_on_a_known_cycle():
    """The detector itself: it finds a two-module and a three-module cycle."""
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c"]]


def test_imports_point_down_the_layers():
    upward = [
        f"{src} (layer {_rank(src)}) imports {dst} (layer {_rank(dst)})"
        for src, targets in GRAPH.items()
        for dst in sorted(targets)
        if _rank(dst) > _rank(src) and dst not in _packages_of(src)
    ]
    assert upward == []


def test_registry_knows_nothing_of_drift():
    offenders = [
        f"{src} -> {dst}"
        for src, targets in GRAPH.items()
        if src.startswith("registry")
        for dst in targets
        if dst.startswith("drift")
    ]
    assert offenders == []


def _third_party(prefix: str) -> list[str]:
    return sorted(
        module
        for module, path in MODULES.items()
        if any(n == prefix or n.startswith(prefix + ".") for n in _imports(module, path))
    )


def test_typer_only_in_the_cli():
    assert [m for m in _third_party("typer") if not m.startswith("drift.cli")] == []
    assert "drift.cli.main" in _third_party("typer")  # the check sees typer where it is


def test_measure_is_pure():
    """drift.measure: arrays and voxel sizes in, arrays/tables out; no MLflow, no registry API."""
    measure = [m for m in MODULES if m.startswith("drift.measure")]
    assert measure
    for forbidden in ("mlflow", "typer", "rich", "torch", "nnunetv2"):
        assert [m for m in _third_party(forbidden) if m in measure] == [], forbidden
    for module in measure:
        assert {t for t in GRAPH[module] if t.startswith("registry.api")} == set(), module


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_size(module):
    lines = MODULES[module].read_text().count("\n")
    assert lines <= MAX_LINES, f"{module}: {lines} lines (split it by responsibility)"


def test_one_level_name():
    """level_name / level_number are defined once (drift.measure.levels)."""
    defined = [
        module
        for module, path in MODULES.items()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef) and node.name in ("level_name", "level_number")
    ]
    assert defined == ["drift.measure.levels", "drift.measure.levels"]
