"""The package's shape: no import circles, a light ``import distlib``, lazy registries."""
from __future__ import annotations

import ast
import subprocess

import pytest
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: source folder -> the package it installs as (pyproject.toml's package-dir mapping)
SOURCES = {"distlib": "distlib", "algorithms": "distlib.algorithms", "configs": "distlib.configs"}


def _modules() -> dict[str, Path]:
    mods = {}
    for folder, package in SOURCES.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join([package, *parts])] = path
    return mods


def _top_level_imports(path: Path, module: str, known: set[str], everywhere: bool = False) -> set[str]:
    """Modules of the package that ``module`` imports when it is imported (not inside functions
    or ``if TYPE_CHECKING:``), with the packages each of them sits in. ``everywhere``: every
    import in the file, also inside functions and under ``TYPE_CHECKING`` (a dependency all the same)."""
    tree = ast.parse(path.read_text())
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()

    def add(node: ast.stmt) -> None:
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = module if is_pkg else module.rsplit(".", 1)[0]
                pkg = ".".join(pkg.split(".")[:len(pkg.split(".")) - node.level + 1])
                base = f"{pkg}.{base}" if base else pkg
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)

    def visit(stmts: list[ast.stmt]) -> None:
        for node in stmts:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, (ast.If, ast.Try)):
                visit(node.body + node.orelse + [s for h in getattr(node, "handlers", []) for s in h.body])
            else:
                add(node)
    if everywhere:
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                add(node)
    else:
        visit(tree.body)
    out = set()
    for name in found:
        parts = name.split(".")
        for k in range(2, len(parts) + 1):   # importing a.b.c imports the packages a.b and a.b.c
            out.add(".".join(parts[:k]))
    # a module's own packages are already being imported when it runs: not an edge
    return {m for m in out & known if m != module and not module.startswith(m + ".")}


def test_no_import_circles():
    mods = _modules()
    graph = {m: _top_level_imports(p, m, set(mods)) for m, p in mods.items()}
    cycles, state, stack = [], {}, []

    def dfs(m: str) -> None:
        state[m] = "open"
        stack.append(m)
        for dep in sorted(graph[m]):
            if state.get(dep) == "open":
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                dfs(dep)
        stack.pop()
        state[m] = "done"
    for m in sorted(graph):
        if m not in state:
            dfs(m)
    assert not cycles, "import circles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_circle_finder_finds_a_circle(tmp_path):
    """The check above can fail: two modules that import each other at the top are a circle."""
    (tmp_path / "a.py").write_text("from distlib.b import x\n")
    (tmp_path / "b.py").write_text("import distlib.a\nif TYPE_CHECKING:\n    import distlib.c\n")
    known = {"distlib.a", "distlib.b", "distlib.c"}
    assert _top_level_imports(tmp_path / "a.py", "distlib.a", known) == {"distlib.b"}
    assert _top_level_imports(tmp_path / "b.py", "distlib.b", known) == {"distlib.a"}


#: The layers of the run, lowest first: a module may depend on (import anywhere: at the top,
#: inside a function, under TYPE_CHECKING) modules of lower layers only, never of its own or a
#: higher one. Every other module of the package is below them all and imports none of them.
LAYERS = [["distlib.run"], ["distlib.sync_loop", "distlib.async_loop", "distlib.ft"], ["distlib.trainer"],
          ["distlib.cli"], ["distlib.__main__"]]


def _layer_violations(mods: dict[str, Path]) -> list[str]:
    rank = {m: k + 1 for k, layer in enumerate(LAYERS) for m in layer}
    bad = []
    for m, path in mods.items():
        for dep in _top_level_imports(path, m, set(mods), everywhere=True):
            if dep in rank and rank.get(m, 0) <= rank[dep]:
                bad.append(f"{m} -> {dep}")
    return sorted(bad)


def test_layers_depend_only_downwards():
    """Run below both loops, the loops side by side (neither imports the other), the entry
    point above them: checked on every import, including those in functions and TYPE_CHECKING."""
    mods = _modules()
    assert all(m in mods for layer in LAYERS for m in layer)
    assert _layer_violations(mods) == []


def test_the_layer_check_sees_imports_in_functions_and_type_checking(tmp_path):
    """The check above can fail: a loop reaching up into the trainer inside a function, or the
    other loop under TYPE_CHECKING, or a low module reaching the run, is reported."""
    (tmp_path / "async_loop.py").write_text("def f():\n    from distlib.trainer import Trainer\n")
    (tmp_path / "sync_loop.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                          "    from distlib.async_loop import async_loop\n")
    (tmp_path / "step.py").write_text("import os\n\nclass A:\n    def g(self):\n        import distlib.run\n")
    mods = {"distlib.async_loop": tmp_path / "async_loop.py", "distlib.sync_loop": tmp_path / "sync_loop.py",
            "distlib.step": tmp_path / "step.py", "distlib.trainer": tmp_path / "step.py",
            "distlib.run": tmp_path / "run.py"}
    (tmp_path / "run.py").write_text("")
    # (the fake trainer imports the run: downwards, allowed)
    assert _layer_violations(mods) == ["distlib.async_loop -> distlib.trainer", "distlib.step -> distlib.run",
                                       "distlib.sync_loop -> distlib.async_loop"]
    # the top-level scan alone misses both of the first two (why the check scans everywhere)
    assert _top_level_imports(tmp_path / "async_loop.py", "distlib.async_loop", set(mods)) == set()
    assert _top_level_imports(tmp_path / "sync_loop.py", "distlib.sync_loop", set(mods)) == set()


def _fresh(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


@pytest.mark.multiprocess
def test_small_tools_start_without_torch():
    proc = _fresh("import sys, distlib, distlib.compare, distlib.topology, distlib.topology.cli\n"
                  "print(sorted(m for m in ('torch', 'greenlet', 'distlib.trainer') if m in sys.modules))")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


@pytest.mark.multiprocess
@pytest.mark.slow
def test_registries_resolve_whatever_was_imported_first():
    """A shipped strategy is found by name in a fresh interpreter that imported nothing else."""
    proc = _fresh("from distlib.strategy import STRATEGIES\n"
                  "print(STRATEGIES.get('al_dsgd').__module__, len(STRATEGIES.names()))")
    assert proc.returncode == 0, proc.stderr
    module, count = proc.stdout.split()
    assert module == "distlib.algorithms.al_dsgd" and int(count) >= 7
