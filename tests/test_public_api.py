"""The package surface: ``__all__`` is true, star-import works, importing bertbeam stays
light, and no module of the package imports one that imports it back."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import bertbeam

PACKAGE = Path(bertbeam.__file__).parent


def test_every_name_in_all_resolves_and_star_import_works():
    code = ("from bertbeam import *; import bertbeam, sys; "
            "missing = [n for n in bertbeam.__all__ if n not in globals()]; "
            "print(missing, len(bertbeam.__all__))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    missing, count = proc.stdout.rsplit(" ", 1)
    assert missing == "[]" and int(count) == len(bertbeam.__all__) > 30


def test_importing_bertbeam_does_not_import_torch():
    code = "import bertbeam, sys; print('torch' in sys.modules, 'transformers' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["False", "False"], proc.stderr[-2000:]


# What a launcher must not import before it needs it: the model stack (preflight's config and
# tokenizer checks load transformers, a local worker the model; transformers itself pulls in
# scipy and accelerate where they are installed) and the optional libraries of other commands
# (report, index, vector sinks, training, ONNX).
MODEL_STACK = ("torch", "transformers", "tokenizers", "safetensors")
OTHER_COMMANDS = ("matplotlib", "sklearn", "seqeval", "faiss", "onnx", "onnxruntime",
                  "sentence_transformers", "pymilvus", "datasets")


def test_choosing_and_parsing_a_command_imports_no_model_library():
    """``bertbeam embed|label`` parse their flags and build the job with Beam alone; the
    ``bertbeam`` entry point imports a command's module only once the command is chosen."""
    heavy = MODEL_STACK + OTHER_COMMANDS
    code = (
        "import sys; import bertbeam.cli; "
        "early = sorted(m for m in sys.modules if m.startswith('bertbeam.run') "
        "or m in ('bertbeam.cli.embed', 'bertbeam.cli.label')); "
        "from bertbeam.cli import embed, label; "
        "embed.make_job(['--input', 'in/*.parquet', '--output', 'out']); "
        "label.make_job(['--task', 'zero-shot', '--labels', 'a,b', '--input', 'in/*.parquet', "
        "'--output', 'out']); "
        f"print(early, sorted(m for m in {heavy!r} if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[] []", proc.stdout


def _imports(path: Path, module: str) -> set[str]:
    """bertbeam modules imported anywhere in ``path`` (module level and inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            base = node.module if node.level == 0 else None
            if base and base.startswith("bertbeam"):
                found.add(base)
                found.update(f"{base}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("bertbeam"))
    return found - {module}


def test_the_package_has_no_import_circle():
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    graph = {m: {i for i in _imports(p, m) if i in modules and i != "bertbeam"}
             for m, p in modules.items() if m != "bertbeam"}
    # Tarjan-free check: depth-first search for a back edge.
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, path: list[str]) -> bool:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle.extend([*path, node, nxt])
                return True
            if nxt not in state and visit(nxt, [*path, node]):
                return True
        state[node] = 2
        return False

    assert not any(visit(m, []) for m in sorted(graph) if m not in state), " -> ".join(cycle)
