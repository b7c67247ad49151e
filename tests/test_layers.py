"""Each layer of the package imports only the layers below it (docs/index.md draws them)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "ailf"

#: Layer of each module, by dotted-name prefix; the longest matching prefix wins.
LAYERS = {
    "ailf.errors": 1,
    "ailf.config": 1,
    "ailf.codec": 1,
    "ailf.server": 1,
    "ailf._cluster_server": 1,
    "ailf.clients": 2,
    "ailf.messaging": 3,
    "ailf.observability": 4,
    "ailf.runtime": 5,
    "ailf.scenario": 6,
    "ailf._admin": 6,
    "ailf._top": 6,
    "ailf._dashboard": 6,
    "ailf.cli": 6,
    "ailf.testing": 6,
    "ailf.__main__": 6,
    "ailf": 6,  # the package itself re-exports everything
}


def layer(module: str) -> int:
    prefix = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[prefix]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(dotted: str) -> bool:
    path = PACKAGE.parent.joinpath(*dotted.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def imported(path: Path) -> set[str]:
    """Every ailf module ``path`` imports (``from ailf import codec`` counts as ailf.codec)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("ailf"))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if not node.module.startswith("ailf"):
                continue
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if is_module(candidate) else node.module)
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=[module_name(p) for p in MODULES])
def test_imports_only_lower_layers(path: Path) -> None:
    name = module_name(path)
    upward = sorted(dep for dep in imported(path) if layer(dep) > layer(name))
    assert upward == [], f"{name} (layer {layer(name)}) imports from higher layers"


def import_graph() -> dict[str, set[str]]:
    """Module -> the ailf modules it imports: every import statement, at any depth
    (function-local and ``if TYPE_CHECKING:`` ones included: each is a dependency a
    reader has to follow, even when Python would not run it at import time)."""
    return {module_name(path): imported(path) - {module_name(path)} for path in MODULES}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for dep in graph.get(node, ()):
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in on_stack:
                low[node] = min(low[node], index[dep])
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


def test_no_import_cycles() -> None:
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_cycles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert cycles(graph) == [["a", "b", "c"]]
