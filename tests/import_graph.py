"""charlab's import graph, read from the source (no module is imported): what `tests/test_architecture.py` checks.

An edge `a -> b` is one import of module `b` in module `a`, of one kind:
* `top`: at module level; `lazy`: inside a function (still an import, so it closes a cycle like any other);
* `tc`: under `if TYPE_CHECKING:` (never runs; left out of cycles and floors);
* `dyn`: a module named by a string that is imported by name: `importlib.import_module("charlab.x")`, and the module
  tables `_API` (`charlab/__init__.py`, its lazy names) and `STAGE_MODULES` (`charlab/stages/__init__.py`).

    graph = ImportGraph.read(project_root())
    graph.cycles({"top", "lazy", "dyn"})     # strongly connected groups of more than one module
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

RUNS = frozenset({"top", "lazy", "dyn"})  # the kinds of edge that import something when the code runs
TABLES = ("_API", "STAGE_MODULES")  # module-level tables of module names that are imported by name


@dataclass(frozen=True)
class Edge:
    """`source` imports `target` (`kind`: top | lazy | tc | dyn) at `line`."""

    source: str
    target: str
    kind: str
    line: int


def module_name(root: Path, path: Path) -> str:
    """`charlab/eval/elo.py` -> `charlab.eval.elo`; a package's `__init__.py` is the package."""
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@dataclass
class ImportGraph:
    """Every `charlab` module (by name -> file) and the imports between them."""

    modules: dict[str, Path]
    edges: list[Edge]

    @classmethod
    def read(cls, root: Path, package: str = "charlab") -> ImportGraph:
        modules = {module_name(root, p): p for p in sorted((root / package).rglob("*.py"))}
        graph = cls(modules, [])
        for name, path in modules.items():
            graph.edges += _Visitor(graph, name, path).edges()
        return graph

    def resolve(self, dotted: str) -> str | None:
        """The longest known module that `dotted` (a module, or a name inside one) starts with."""
        parts = dotted.split(".")
        while parts:
            name = ".".join(parts)
            if name in self.modules:
                return name
            parts.pop()
        return None

    def adjacency(self, kinds: Iterable[str] = RUNS) -> dict[str, set[str]]:
        wanted = set(kinds)
        out: dict[str, set[str]] = {m: set() for m in self.modules}
        for edge in self.edges:
            if edge.kind in wanted:
                out[edge.source].add(edge.target)
        return out

    def cycles(self, kinds: Iterable[str] = RUNS) -> list[set[str]]:
        """Strongly connected groups of more than one module (Tarjan), over edges of `kinds`."""
        return [c for c in _components(self.adjacency(kinds)) if len(c) > 1]

    def floors(self, kinds: Iterable[str] = RUNS) -> dict[str, int]:
        """Each module's floor: the longest import path down from it (a cycle's modules share one floor)."""
        graph = self.adjacency(kinds)
        components = _components(graph)
        of = {m: i for i, c in enumerate(components) for m in c}
        memo: dict[int, int] = {}
        for index in range(len(components)):  # Tarjan yields a component after every component below it
            memo[index] = max(
                (memo[of[t]] + 1 for m in components[index] for t in graph[m] if of[t] != index), default=0
            )
        return {m: memo[of[m]] for m in self.modules}

    @cached_property
    def importers(self) -> dict[str, list[Edge]]:
        """Edges by target."""
        out: dict[str, list[Edge]] = {}
        for edge in self.edges:
            out.setdefault(edge.target, []).append(edge)
        return out


class _Visitor:
    """The import edges of one module."""

    def __init__(self, graph: ImportGraph, name: str, path: Path) -> None:
        self.graph, self.name, self.path = graph, name, path
        self.package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        self.found: list[Edge] = []

    def edges(self) -> list[Edge]:
        tree = ast.parse(self.path.read_text(encoding="utf-8"))
        self._visit(tree, in_function=False, type_checking=False)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and ast.unparse(node.func).endswith("import_module") and node.args:
                first = node.args[0]
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    self._add(first.value, "dyn", node.lineno)
        for node in tree.body:
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            if any(isinstance(t, ast.Name) and t.id in TABLES for t in targets):
                for const in ast.walk(node):
                    if isinstance(const, ast.Constant) and isinstance(const.value, str):
                        if const.value.startswith("charlab"):
                            self._add(const.value, "dyn", node.lineno)
        return self.found

    def _add(self, dotted: str, kind: str, line: int) -> None:
        target = self.graph.resolve(dotted)
        if target is not None and target != self.name:
            self.found.append(Edge(self.name, target, kind, line))

    def _visit(self, node: ast.AST, in_function: bool, type_checking: bool) -> None:
        for child in ast.iter_child_nodes(node):
            kind = "tc" if type_checking else ("lazy" if in_function else "top")
            if isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name.startswith("charlab"):
                        self._add(alias.name, kind, child.lineno)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = self.package.split(".")
                    parts = parts[: len(parts) - (child.level - 1)]
                    base = ".".join(parts + ([base] if base else []))
                if base.startswith("charlab"):
                    for alias in child.names:  # `from charlab.eval import report` imports the module `report`
                        full = f"{base}.{alias.name}"
                        self._add(full if full in self.graph.modules else base, kind, child.lineno)
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                self._visit(child, True, type_checking)
            elif isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                self._visit(child, in_function, True)
            else:
                self._visit(child, in_function, type_checking)


def _components(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's strongly connected components (iterative), each listed after every component it reaches."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[set[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                out.append(component)
    return out
