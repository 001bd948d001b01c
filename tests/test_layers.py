"""The layers as packages: no module imports from a layer above its own, and module-level
imports form no cycle. Function-level imports count for the direction too."""

from __future__ import annotations

import ast
from pathlib import Path

import bertbeam

ROOT = Path(bertbeam.__file__).parent

#: Lowest first: a module may import from its own layer and the layers before it.
LAYERS = ("ground", "core", "tasks", "beam", "index", "run", "training", "cli")
GROUND = {"bertbeam.config", "bertbeam.filesystems", "bertbeam.gcs"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str | None:
    if module in GROUND:
        return "ground"
    parts = module.split(".")
    if len(parts) >= 2 and parts[1] in LAYERS:
        return parts[1]
    return None  # bertbeam itself: the public face, above every layer


def imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported bertbeam module, line, at module level) for each import in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = {id(n) for n in tree.body}
    top |= {id(c) for n in tree.body if isinstance(n, ast.If) for c in n.body}  # TYPE_CHECKING
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bertbeam"):
            for alias in node.names:
                # `from bertbeam.core import metrics`: the submodule is what is imported
                sub = f"{node.module}.{alias.name}"
                target = sub if _is_module(sub) else node.module
                found.append((target, node.lineno, id(node) in top))
        elif isinstance(node, ast.Import):
            found += [(a.name, node.lineno, id(node) in top) for a in node.names if a.name.startswith("bertbeam")]
    return found


def _is_module(name: str) -> bool:
    path = ROOT.parent / name.replace(".", "/")
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def test_no_module_imports_from_a_layer_above_it():
    upward = []
    for name, path in _modules().items():
        mine = layer_of(name)
        if mine is None:
            continue
        for target, line, _ in imports(path):
            theirs = layer_of(target)
            if theirs is None:
                if target == "bertbeam":  # `from bertbeam import __version__` only
                    continue
                upward.append(f"{name}:{line} -> {target} (the public face)")
            elif LAYERS.index(theirs) > LAYERS.index(mine):
                upward.append(f"{name}:{line} ({mine}) -> {target} ({theirs})")
    assert not upward, "imports pointing up a layer:\n" + "\n".join(upward)


def test_module_level_imports_form_no_cycle():
    modules = _modules()
    graph = {name: sorted({t for t, _, top in imports(path) if top and t in modules and t != name})
             for name, path in modules.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]) if nxt in stack else nxt)
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name, [name])
    # A package's __init__ importing its own submodule is not a cycle of the layers.
    cycles = [c for c in cycles if not all(p.startswith(c.split(" -> ")[0]) for p in c.split(" -> "))]
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_every_module_sits_in_a_layer_package():
    loose = [n for n in _modules() if layer_of(n) is None and n != "bertbeam"]
    assert not loose, f"modules outside the layer packages: {loose}"
    top = sorted(p.name for p in ROOT.iterdir() if p.name != "__pycache__")
    assert len(top) <= 12, top


def test_the_check_catches_an_upward_import(tmp_path):
    """The walker itself: a core module importing from run is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("from bertbeam.run.summary import read_summary\n"
                   "def f():\n    from bertbeam.core import metrics\n")
    found = imports(bad)
    assert ("bertbeam.run.summary", 1, True) in found
    assert ("bertbeam.core.metrics", 3, False) in found
    assert layer_of("bertbeam.run.summary") == "run" and layer_of("bertbeam.config") == "ground"
