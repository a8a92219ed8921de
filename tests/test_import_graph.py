"""The shape of the code: no import cycle, no file too long to read in one sitting, no ``sys.path`` edits.

The graph holds every import of ``tempo_pl/``, ``callbacks/`` (installed as ``tempo_pl.callbacks``) and
``benchmarks/``, wherever it stands: at module level, inside a function, or under ``TYPE_CHECKING``. An import inside a
function still makes a cycle: it only moves the failure from import time to call time, so it is counted here.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TREES = {"tempo_pl": ROOT / "tempo_pl", "tempo_pl.callbacks": ROOT / "callbacks", "benchmarks": ROOT / "benchmarks"}
MAX_LINES = 400


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` of the three trees (a package is named by its ``__init__``)."""
    modules = {}
    for prefix, tree in TREES.items():
        for path in sorted(tree.rglob("*.py")):
            parts = path.relative_to(tree).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join((prefix, *parts))] = path
    return modules


def imported_names(path: Path, module: str, is_package: bool) -> set[str]:
    """Every dotted name ``path`` imports (``from a import b`` gives ``a`` and ``a.b``), relative imports resolved."""
    package = module if is_package else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports (a script of ``benchmarks/`` imports its siblings by bare name).

    A module's own ancestor packages are left out: Python imports them before the module in any case, so
    ``from . import sibling`` inside a package whose ``__init__`` imports that module is no cycle."""
    modules = module_files()
    graph = {}
    for module, path in modules.items():
        targets = set()
        for name in imported_names(path, module, path.name == "__init__.py"):
            for candidate in (name, f"benchmarks.{name}"):
                if candidate in modules and candidate != module and not module.startswith(candidate + "."):
                    targets.add(candidate)
        graph[module] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
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


def test_cycle_finder_sees_a_cycle_through_any_number_of_modules():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_relative_and_nested_imports_are_read(tmp_path):
    source = tmp_path / "mod.py"
    source.write_text("from . import sibling\nfrom ..up import thing\n"
                      "def f():\n    from tempo_pl.x import y\n"
                      "if TYPE_CHECKING:\n    import tempo_pl.z\n")
    names = imported_names(source, "tempo_pl.pkg.mod", is_package=False)
    assert {"tempo_pl.pkg.sibling", "tempo_pl.up.thing", "tempo_pl.x.y", "tempo_pl.z"} <= names


def test_no_import_cycle():
    assert cycles(import_graph()) == []


def test_the_core_never_imports_the_pipelines_or_the_benchmarks():
    graph = import_graph()
    upward = sorted((module, target) for module, targets in graph.items() for target in targets
                    if not module.startswith(("tempo_pl.pipelines", "tempo_pl.cli", "benchmarks"))
                    and target.startswith(("tempo_pl.pipelines", "benchmarks")))
    assert upward == []


@pytest.mark.parametrize("prefix", sorted(TREES))
def test_no_file_over_the_line_limit(prefix):
    tree = TREES[prefix]
    long = {str(path.relative_to(ROOT)): n for path in tree.rglob("*.py")
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_no_sys_path_edits():
    """A script of ``benchmarks/`` finds its siblings because Python puts its folder first; the package is installed."""
    adds = re.compile(r"sys\.path\.(insert|append|extend)\(|sys\.path\s*(\+?=|\[)")
    edits = [str(path.relative_to(ROOT)) for path in module_files().values() if adds.search(path.read_text())]
    assert edits == []
