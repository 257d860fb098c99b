"""The layout's rules, checked on the source: no import cycles, data flows one way, small modules.

Every ``import`` counts, including lazy ones inside functions. The rules:
* the algorithm (``prunenet`` except its CLI and its job orchestration) never imports ``exporters``,
  ``serving``, the CLI or the jobs;
* ``exporters`` never imports ``serving`` (serving consumes exported directories, not the reverse);
* nothing imports the CLI (it is the thin face on top);
* no two files import each other, directly or through others;
* no module outside ``tests/`` is over 300 lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("prunenet", "exporters", "serving")
FACE = ("prunenet.cli", "prunenet.jobs")
"""The parts of ``prunenet`` that may join the three packages."""
API = "prunenet"
"""The package root: it re-exports the Python API of :mod:`prunenet.jobs.api` (a face, like the CLI)."""
MAX_LINES = 300


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path, packages=PACKAGES) -> dict[str, set[str]]:
    """module -> the project modules it imports (anywhere in the file)."""
    files = {module_name(root, p): p for pkg in packages for p in (root / pkg).rglob("*.py")
             if "templates" not in p.parts}
    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        is_pkg = path.name == "__init__.py"
        base = mod.split(".") if is_pkg else mod.split(".")[:-1]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                pkg = ".".join(base[: len(base) - node.level + 1]) if node.level else ""
                origin = ".".join(p for p in (pkg, node.module or "") if p)
                targets = [f"{origin}.{a.name}" if f"{origin}.{a.name}" in files else origin for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in files:
                    t = t.rpartition(".")[0]
                if t and t != mod:
                    deps.add(t)
        graph[mod] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _under(mod: str, prefixes) -> bool:
    return any(mod == p or mod.startswith(p + ".") for p in prefixes)


def violations(graph: dict[str, set[str]]) -> list[str]:
    found = []
    for mod, deps in graph.items():
        for dep in deps:
            api_face = mod == API and dep == "prunenet.jobs.api"
            if (_under(mod, ("prunenet",)) and not _under(mod, FACE) and not api_face
                    and _under(dep, ("exporters", "serving", *FACE))):
                found.append(f"{mod} -> {dep} (the algorithm imports downstream code)")
            if _under(mod, ("exporters",)) and _under(dep, ("serving",)):
                found.append(f"{mod} -> {dep} (an exporter imports serving)")
            if _under(dep, ("prunenet.cli",)) and not _under(mod, ("prunenet.cli",)):
                found.append(f"{mod} -> {dep} (something imports the CLI)")
    return sorted(found)


def test_no_import_cycles():
    assert cycles(import_graph(ROOT)) == []


def test_data_flows_one_way():
    assert violations(import_graph(ROOT)) == []


def test_modules_are_small():
    big = {str(p.relative_to(ROOT)): n for pkg in (*PACKAGES, "examples") for p in (ROOT / pkg).rglob("*.py")
           if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert big == {}


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.fixture
def fake_tree(tmp_path):
    _write(tmp_path, {f"{p}/__init__.py": "" for p in PACKAGES} | {
        "prunenet/planning/__init__.py": "",
        "prunenet/planning/plan.py": "X = 1\n",
        "prunenet/cli/__init__.py": "def f():\n    from exporters.hf import write\n",
        "exporters/hf.py": "from prunenet.planning.plan import X\n",
        "serving/bench.py": "import exporters.hf\n",
    })
    return tmp_path


def test_checker_accepts_a_clean_tree(fake_tree):
    graph = import_graph(fake_tree)
    assert graph["exporters.hf"] == {"prunenet.planning.plan"}
    assert graph["prunenet.cli"] == {"exporters.hf"}
    assert violations(graph) == [] and cycles(graph) == []


def test_checker_catches_a_lazy_forbidden_import_and_a_cycle(fake_tree):
    _write(fake_tree, {"prunenet/planning/plan.py": "def g():\n    from serving import bench\n"})
    graph = import_graph(fake_tree)
    assert violations(graph) == ["prunenet.planning.plan -> serving.bench (the algorithm imports downstream code)"]
    assert cycles(graph) == [["exporters.hf", "prunenet.planning.plan", "serving.bench"]]
    _write(fake_tree, {"prunenet/planning/plan.py": "", "exporters/hf.py": "from ..serving import bench\n"})
    assert "exporters.hf -> serving.bench (an exporter imports serving)" in violations(import_graph(fake_tree))
