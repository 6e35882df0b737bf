"""The layout stays readable: no import circles, one folder per concern, every package says what it holds.

The import graph counts every import that runs, function-level ones included (an import inside a function
is a circle waiting for the day it moves to the top); imports under ``if TYPE_CHECKING:`` never run and
are left out.
"""

from __future__ import annotations

import ast
import tomllib
from collections import defaultdict
from pathlib import Path

from llmops_testing import REPO

PACKAGES = {"llmops": REPO / "llmops", "llmops_model": REPO / "model"}


def _modules() -> dict[str, Path]:
    found = {}
    for top, root in PACKAGES.items():
        for path in root.rglob("*.py"):
            parts = [top, *path.relative_to(root).with_suffix("").parts]
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules a file imports when it runs (the longest known prefix of each imported name)."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                out.add(name)
    return out


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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


def test_no_import_circles_among_the_projects_modules():
    known = _modules()
    graph = {m: _imports(p, known) - {m} for m, p in known.items()}
    assert _circles(graph) == []


def test_the_circle_check_finds_a_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _circles(graph) == [["a", "b", "c"]]


def test_every_package_folder_is_installed_and_says_what_it_holds():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    declared = set(config["packages"])
    folders = {m for m, p in _modules().items() if p.name == "__init__.py"}
    assert declared == folders, "pyproject.toml's [tool.setuptools] packages must list every package folder"
    for name in folders:
        doc = ast.get_docstring(ast.parse(_modules()[name].read_text()))
        assert doc, f"{name}/__init__.py has no docstring saying what lives there"


def test_no_prefix_named_sibling_modules():
    """`k8s_objects.py` beside `k8s_jobs.py` means a `k8s/` folder is missing."""
    by_folder: dict[tuple[Path, str], list[str]] = defaultdict(list)
    for path in _modules().values():
        if "_" in path.stem and not path.stem.startswith("_"):
            by_folder[(path.parent, path.stem.split("_")[0])].append(path.name)
    crowded = {f"{folder.relative_to(REPO)}/{prefix}_*": names
               for (folder, prefix), names in by_folder.items() if len(names) > 1}
    assert crowded == {}
