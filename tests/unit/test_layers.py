"""No import cycle anywhere in the shipped packages (an AST walk, nothing is imported).

Every ``import`` counts, including those inside functions: a lazy import that closes a
circle is still a circle, only one that fails later. Imports under ``if TYPE_CHECKING:``
do not run and are not counted. A package's own ``__init__`` being imported first when a
submodule is imported is Python's doing, not an edge.
"""

from __future__ import annotations

import ast
import pathlib
from collections.abc import Iterable, Iterator

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGES = ("gateway", "anycast", "redirect", "certs")


def module_name(path: pathlib.Path, root: pathlib.Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node except the bodies of ``if TYPE_CHECKING:`` blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                stack.extend(child.orelse)
                continue
            stack.append(child)


def imports_of(path: pathlib.Path, name: str, modules: set[str]) -> set[str]:
    """The project modules ``name`` (the module in ``path``) imports at run time."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def resolve(candidate: str) -> None:
        # "from a.b import c" names module a.b.c when it exists, else a name in a.b.
        while candidate and candidate not in modules:
            candidate = candidate.rpartition(".")[0]
        if candidate and candidate != name:
            found.add(candidate)

    for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                resolve(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            for alias in node.names:
                resolve(f"{prefix}.{alias.name}")
    return found


def import_graph(root: pathlib.Path, packages: Iterable[str]) -> dict[str, set[str]]:
    paths = {module_name(p, root): p for pkg in packages for p in (root / pkg).rglob("*.py")}
    modules = set(paths)
    return {name: imports_of(path, name, modules) for name, path in paths.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            for target in edges:
                if target not in index:
                    index[target] = low[target] = counter
                    counter += 1
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(sorted(graph.get(target, ())))))
                    break
                if target in on_stack:
                    low[node] = min(low[node], index[target])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
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
    return found


def test_no_import_cycle_in_the_packages() -> None:
    graph = import_graph(ROOT, PACKAGES)
    assert len(graph) > 80, "the walk found too few modules to mean anything"
    assert cycles(graph) == []


@pytest.mark.parametrize(("layer", "must_not_import"), [
    ("gateway.dots", ("gateway.coap", "gateway.transport", "gateway.client", "gateway.server",
                      "gateway.relay", "gateway.ops", "gateway.config", "gateway.daemon")),
    ("gateway.coap", ("gateway.transport", "gateway.client", "gateway.server", "gateway.relay",
                      "gateway.ops", "gateway.daemon")),
    ("gateway.transport", ("gateway.dots", "gateway.coap", "gateway.discovery",
                           "gateway.client", "gateway.server", "gateway.relay", "gateway.ops",
                           "gateway.daemon", "gateway.config", "certs")),
    ("gateway.ops", ("gateway.client", "gateway.server", "gateway.relay", "gateway.daemon")),
    ("gateway.client", ("gateway.server", "gateway.relay", "gateway.daemon", "gateway.cli")),
    ("gateway.server", ("gateway.client", "gateway.relay", "gateway.daemon", "gateway.cli")),
    ("gateway.relay", ("gateway.daemon", "gateway.cli")),
])
def test_layers_import_only_downwards(layer: str, must_not_import: tuple[str, ...]) -> None:
    graph = import_graph(ROOT, PACKAGES)
    wrong = sorted(
        f"{source} -> {target}"
        for source, targets in graph.items() if source == layer or source.startswith(layer + ".")
        for target in targets
        if any(target == bad or target.startswith(bad + ".") for bad in must_not_import)
    )
    assert wrong == []


def test_the_walk_finds_a_cycle_closed_by_a_lazy_import(tmp_path: pathlib.Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg.b import thing\n")
    (package / "b.py").write_text("from . import c\nthing = 1\n")
    (package / "c.py").write_text("def late():\n    from pkg import a\n")
    (package / "d.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import a\n")
    graph = import_graph(tmp_path, ["pkg"])
    assert graph["pkg.d"] == set()
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.c"]]
