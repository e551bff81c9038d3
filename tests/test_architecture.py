"""The house rules, checked on the source: module and function sizes, no import cycle, imports only go down the
floors of the house (ARCHITECTURE.md), only `charlab/__main__.py` imports the CLI, and importing any module has
no side effect (no `.env` read, no Hydra resolver or schema registered: `charlab.app.setup()` does that).

Each `KNOWN_*` set lists the violations the code still has; a test fails on a new one *and* on a listed one that is
gone, so the lists only shrink.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from charlab.settings import PACKAGE_DIR
from tests.import_graph import ImportGraph

pytestmark = pytest.mark.unit

ROOT = PACKAGE_DIR.parent
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 80
MAX_POSITIONAL = 8  # a function with more positional parameters takes a dataclass or keyword-only ones

# The floors of the house, top down. A module may import modules of a lower floor, and of its own group (`eval`
# imports `eval`); never a higher floor, nor another group of its own floor (`training` never imports `eval`).
# Every module must be placed (a new one is placed on purpose).
FLOORS: list[tuple[str, tuple[str, ...]]] = [
    ("faces", ("charlab.train", "charlab.__main__", "charlab.api", "charlab", "charlab.studio")),
    ("root", ("charlab.app",)),
    ("stages", ("charlab.stages",)),
    ("wiring", ("charlab.services", "charlab.config_objects", "charlab.compose", "charlab.launch", "charlab.runner",
                "charlab.report", "charlab.sweep")),
    ("training", ("charlab.training",)),
    ("eval", ("charlab.eval",)),
    ("drafting", ("charlab.drafting",)),
    ("generation", ("charlab.generation",)),
    ("data", ("charlab.data",)),
    ("foundation", ("charlab.errors", "charlab.settings", "charlab.config_files", "charlab.config_checks",
                    "charlab.schemas", "charlab.config_store", "charlab.registry", "charlab.redact",
                    "charlab.failpoints", "charlab.distributed", "charlab.memory", "charlab.torchrun_logs",
                    "charlab.tracking", "charlab.run", "charlab.estimate", "charlab.chat_format", "charlab.models",
                    "charlab.tiny_model", "charlab.constitution", "charlab.constitution_import")),
]  # fmt: skip
# floors that share a level: the libraries sit side by side above `generation`
LEVEL = {"faces": 7, "root": 6, "stages": 5, "wiring": 4, "training": 3, "eval": 3, "drafting": 3,
         "generation": 2, "data": 1, "foundation": 0}  # fmt: skip
LIBRARIES = ("training", "eval", "drafting", "generation", "data")

KNOWN_BIG_MODULES: set[str] = set()
KNOWN_LONG_FUNCTIONS: set[str] = set()
KNOWN_MANY_POSITIONAL: set[str] = {  # the backends' and the OpenAI sampler's constructors (issue 24, another part)
    "charlab/generation/openai_compat.py:OpenAISampler.__init__",
    "charlab/training/local.py:LocalBackend.create",
    "charlab/training/tinker_backend.py:TinkerBackend.create",
}
KNOWN_CYCLES: set[frozenset[str]] = set()
KNOWN_UP_EDGES: set[tuple[str, str]] = set()
KNOWN_BELOW_TRAIN: set[str] = set()
KNOWN_TRAIN_IMPORTERS: set[str] = set()
KNOWN_STAGE_TO_STAGE: set[tuple[str, str]] = set()
KNOWN_SIDE_EFFECTS: set[str] = set()


@pytest.fixture(scope="module")
def graph() -> ImportGraph:
    return ImportGraph.read(ROOT)


def floor_of(module: str) -> str | None:
    """The floor a module belongs to: the one naming it or the package it is in (longest name wins)."""
    best, length = None, -1
    for floor, names in FLOORS:
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > length:
                best, length = floor, len(name)
    return best


def same_as_known(found: set, known: set, what: str) -> None:
    """`found` must equal `known`: a new violation fails, and so does a listed one that no longer occurs."""
    new, gone = found - known, known - found
    assert not new, f"new {what}: {sorted(map(str, new))}"
    assert not gone, f"{what} fixed (take them off the KNOWN list here): {sorted(map(str, gone))}"


def python_files() -> list[Path]:
    return sorted((ROOT / "charlab").rglob("*.py"))


def test_no_module_over_400_lines() -> None:
    big = {
        str(p.relative_to(ROOT))
        for p in python_files()
        if len(p.read_text(encoding="utf-8").splitlines()) > MAX_MODULE_LINES
    }
    same_as_known(big, KNOWN_BIG_MODULES, f"modules over {MAX_MODULE_LINES} lines")


def functions(node: ast.AST, prefix: str = "") -> list[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """(`Qual.name`, its node) of every function under `node`, methods and nested functions included."""
    out: list[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]] = []
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            name = f"{prefix}{child.name}"
            if not isinstance(child, ast.ClassDef):
                out.append((name, child))
            out += functions(child, name + ".")
        else:
            out += functions(child, prefix)
    return out


def function_lengths(node: ast.AST) -> list[tuple[str, int]]:
    """(`Qual.name`, lines from its `def` to its last line) of every function under `node`."""
    return [(name, fn.end_lineno - fn.lineno + 1) for name, fn in functions(node)]  # type: ignore[operator]


def long_functions() -> set[str]:
    """`path:Qual.name` of every function longer than the limit."""
    return {
        f"{path.relative_to(ROOT)}:{name}"
        for path in python_files()
        for name, lines in function_lengths(ast.parse(path.read_text(encoding="utf-8")))
        if lines > MAX_FUNCTION_LINES
    }


def test_no_function_over_80_lines() -> None:
    same_as_known(long_functions(), KNOWN_LONG_FUNCTIONS, f"functions over {MAX_FUNCTION_LINES} lines")


def positional_counts(node: ast.AST) -> list[tuple[str, int]]:
    """(`Qual.name`, how many parameters can be passed by position, `self`/`cls` aside) of every function."""
    return [
        (name, len([a for a in fn.args.posonlyargs + fn.args.args if a.arg not in ("self", "cls")]))
        for name, fn in functions(node)
    ]


def test_no_function_takes_more_than_8_positional_parameters() -> None:
    """A call with nine values in a row is read by counting; a dataclass or keyword-only parameters name them."""
    many = {
        f"{path.relative_to(ROOT)}:{name}"
        for path in python_files()
        for name, count in positional_counts(ast.parse(path.read_text(encoding="utf-8")))
        if count > MAX_POSITIONAL
    }
    same_as_known(many, KNOWN_MANY_POSITIONAL, f"functions with more than {MAX_POSITIONAL} positional parameters")


def test_one_reader_of_meta_json() -> None:
    """`charlab.run.read_meta` is the one reader of a run's `meta.json`: no other function names the file and parses
    JSON itself (six did: the pipeline, its report, launch, export, sft's start weights, the sweep table)."""
    readers = []
    for path in python_files():
        for fn in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            docstrings = {id(n.value) for n in ast.walk(fn) if isinstance(n, ast.Expr)}
            names = any(
                isinstance(n, ast.Constant) and isinstance(n.value, str) and "meta.json" in n.value
                and id(n) not in docstrings
                for n in ast.walk(fn)
            )  # fmt: skip
            parses = any(
                isinstance(n, ast.Attribute) and n.attr in ("load", "loads") and getattr(n.value, "id", "") == "json"
                for n in ast.walk(fn)
            )
            if names and parses:
                readers.append(f"{path.relative_to(ROOT)}:{fn.name}")
    assert readers == [], f"read meta.json with charlab.run.read_meta: {readers}"


def test_no_import_cycle(graph: ImportGraph) -> None:
    """Module-level, in-function and by-name imports all count: a lazy import cannot hide a cycle."""
    found = {frozenset(c) for c in graph.cycles()}
    same_as_known(found, KNOWN_CYCLES, "import cycles")


def test_every_module_has_a_floor(graph: ImportGraph) -> None:
    unplaced = [m for m in graph.modules if floor_of(m) is None]
    assert not unplaced, f"place these modules in FLOORS (tests/test_architecture.py): {unplaced}"


def test_imports_only_go_down(graph: ImportGraph) -> None:
    """Every import that runs goes to a lower floor or stays inside its own group."""
    up = set()
    for edge in graph.edges:
        if edge.kind == "tc":
            continue
        a, b = floor_of(edge.source), floor_of(edge.target)
        if a is None or b is None or a == b:
            continue
        if LEVEL[b] >= LEVEL[a]:
            up.add((edge.source, edge.target))
    same_as_known(up, KNOWN_UP_EDGES, "imports that go up (or sideways between libraries)")


def test_the_entry_point_is_on_the_top_floor(graph: ImportGraph) -> None:
    """Drawn by its imports, the house has `charlab.train` above every stage and library."""
    floors = graph.floors()
    top = floors["charlab.train"]
    below = {m for m in graph.modules if floor_of(m) in ("stages", *LIBRARIES) and floors[m] >= top}
    same_as_known(below, KNOWN_BELOW_TRAIN, f"stage and library modules not below charlab.train (floor {top})")


def test_only_main_imports_train(graph: ImportGraph) -> None:
    importers = {e.source for e in graph.importers.get("charlab.train", [])} - {"charlab.__main__"}
    same_as_known(importers, KNOWN_TRAIN_IMPORTERS, "modules importing charlab.train")


def test_stages_import_no_other_stage(graph: ImportGraph) -> None:
    """A stage module shares code through `_` helpers (or a library), never by importing another stage."""
    found = set()
    for edge in graph.edges:
        if edge.kind == "tc" or not edge.source.startswith("charlab.stages."):
            continue
        target = edge.target.rpartition(".")[2]
        if edge.target.startswith("charlab.stages.") and not target.startswith("_") and target != "handoff":
            found.add((edge.source, edge.target))
    same_as_known(found, KNOWN_STAGE_TO_STAGE, "stage modules importing another stage module")


SIDE_EFFECTS_SCRIPT = r"""
import importlib, json, sys
import dotenv, dotenv.main

def refuse(*args, **kwargs):
    raise RuntimeError("read .env")

dotenv.load_dotenv = dotenv.main.load_dotenv = refuse
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

RESOLVERS = ("charlab_root", "charlab_package", "uid", "safe")
found = []
for name in json.loads(sys.argv[1]):
    try:
        importlib.import_module(name)
    except RuntimeError as err:
        found.append([name, str(err)])
        continue
    done = [r for r in RESOLVERS if OmegaConf.has_resolver(r)]
    if "schemas" in ConfigStore.instance().repo:
        done.append("schemas")
    if done:
        found.append([name, "registered " + ", ".join(done)])
        break  # what one module registered stays registered: the first is the culprit
print(json.dumps(found))
"""


def importable_modules(graph: ImportGraph) -> list[str]:
    """Every module but Streamlit's page scripts (they draw a page when run) and `__main__` modules."""
    skip = ("charlab.studio.app", "charlab.studio.views.")
    return [m for m in graph.modules if not m.startswith(skip) and not m.endswith("__main__")]


def test_importing_any_module_has_no_side_effect(graph: ImportGraph) -> None:
    """In a fresh interpreter whose `.env` reader raises: import every module, one by one; none may read `.env`
    or register a Hydra resolver or schema (that is `charlab.app.setup()`'s job)."""
    modules = importable_modules(graph)
    result = subprocess.run(
        [sys.executable, "-c", SIDE_EFFECTS_SCRIPT, json.dumps(modules)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    found = {name for name, _ in json.loads(result.stdout.strip().splitlines()[-1])}
    same_as_known(found, KNOWN_SIDE_EFFECTS, "modules with an import side effect")


SHARED_SERVICES = ("ServerPool", "Services")  # classes whose instances a process shares: handed down, never global
COMPOSITION_ROOT = "charlab/app.py"  # the one module that keeps the process's `Services` (what `setup()` returns)


def module_level_services(tree: ast.Module) -> list[str]:
    """Names a module binds to a new `ServerPool`/`Services` at module level, or through `global` in a function."""
    made = {
        id(node)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) in SHARED_SERVICES
    }
    globals_ = {name for node in ast.walk(tree) if isinstance(node, ast.Global) for name in node.names}
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Assign, ast.AnnAssign)) or node.value is None:
            continue
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        names = [t.id for t in targets if isinstance(t, ast.Name)]
        at_top = node in tree.body
        if any(id(n) in made for n in ast.walk(node.value)) and (at_top or set(names) & globals_):
            found += names
    return found


def test_no_module_holds_a_server_pool_but_the_composition_root() -> None:
    """The vLLM server pool is an object handed to whoever needs it (`run.pool`), not a module global: only
    `charlab/app.py` keeps the process's `Services`. Injected bug this catches: `POOL = ServerPool()` back in
    `charlab/generation/vllm.py` (or any module)."""
    found = {
        f"{path.relative_to(ROOT)}:{name}"
        for path in python_files()
        if str(path.relative_to(ROOT)) != COMPOSITION_ROOT
        for name in module_level_services(ast.parse(path.read_text(encoding="utf-8")))
    }
    assert not found, f"module-level shared services (hand them down instead): {sorted(found)}"
    root = module_level_services(ast.parse((ROOT / COMPOSITION_ROOT).read_text(encoding="utf-8")))
    assert root == ["_services"], root  # the check itself sees what it looks for
