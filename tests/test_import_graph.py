"""The package's import graph has no circles (module-level and function-level imports alike)."""
from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

# the installed package names of the source folders (training/ is hndesc_features.training)
PACKAGES = {"hndesc_features": ROOT / "hndesc_features", "hndesc_features.training": ROOT / "training"}


def module_files() -> dict[str, Path]:
    out = {}
    for pkg, root in PACKAGES.items():
        for f in root.rglob("*.py"):
            parts = list(f.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([pkg, *parts])] = f
    return out


def imports_of(name: str, path: Path, modules: dict) -> set[str]:
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        for t in targets:
            t = t.replace("training.", "hndesc_features.training.", 1) if t.startswith("training.") else t
            t = "hndesc_features.training" if t == "training" else t
            while t and t not in modules:  # the module itself, or the package that holds the name
                t = t.rpartition(".")[0]
            if t and t != name and not name.startswith(t + "."):  # a module may import its own package
                found.add(t)
    return found


def find_cycle(graph: dict) -> list:
    state, stack = {}, []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                c = visit(m)
                if c:
                    return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            c = visit(n)
            if c:
                return c
    return []


def test_no_import_cycles():
    modules = module_files()
    graph = {n: imports_of(n, p, modules) for n, p in modules.items()}
    # package __init__ files that only re-export are still nodes: a cycle through them is a cycle
    cycle = find_cycle(graph)
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []
