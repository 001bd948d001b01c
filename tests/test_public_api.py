"""The package surface: ``__all__`` is true, star-import works, importing bertbeam stays
light, and no module of the package imports one that imports it back."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import bertbeam

PACKAGE = Path(bertbeam.__file__).parent


def test_every_name_in_all_resolves_and_star_import_works_without_torch():
    """``__all__`` is the short list of what users call (at most 35 names), and a star import
    in a fresh interpreter imports neither torch nor transformers."""
    code = ("from bertbeam import *; import bertbeam, sys; "
            "missing = [n for n in bertbeam.__all__ if n not in globals()]; "
            "print(missing, 'torch' in sys.modules, 'transformers' in sys.modules, "
            "len(bertbeam.__all__))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    missing, torch, transformers, count = proc.stdout.rsplit(" ", 3)
    assert (missing, torch, transformers) == ("[]", "False", "False")
    assert int(count) == len(bertbeam.__all__) <= 35
    assert len(set(bertbeam.__all__)) == len(bertbeam.__all__)


def test_the_public_face_names_what_users_call():
    expected = {"ReadDocuments", "Tokenize", "BatchByTokens", "RunModel", "Postprocess",
                "EmbedDocuments", "LabelDocuments", "WriteResults", "ModelSpec", "RunSpec",
                "Columns", "EmbedTask", "ClassifyTask", "ZeroShotTask", "DeadLetter",
                "DEAD_LETTER", "InputError", "ModelLoadError"}
    assert expected <= set(bertbeam.__all__)
    internals = {"Engine", "EngineSpec", "Window", "WindowChunk", "BatchPlan", "OutputChunk"}
    assert not internals & set(bertbeam.__all__)
    assert not [n for n in internals if hasattr(bertbeam, n)]  # they live under bertbeam.core
    # The handler loads on first use (Beam's ml.inference imports torch), by name only.
    from bertbeam.beam.handler import BertModelHandler

    assert bertbeam.BertModelHandler is BertModelHandler


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


def private_imports(path: Path, module: str) -> list[str]:
    """``module``'s uses of another bertbeam module's ``_private`` names: imported by name
    (``from bertbeam.config import _check``) or reached through the module
    (``checks._load(...)``)."""
    tree = ast.parse(path.read_text())
    found, modules = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bertbeam"):
            for alias in node.names:
                target = f"{node.module}.{alias.name}"
                if (PACKAGE.parent / target.replace(".", "/")).with_suffix(".py").exists():
                    modules.add(alias.asname or alias.name)
                elif _private(alias.name) and node.module != module:
                    found.append(f"{node.lineno}: from {node.module} import {alias.name}")
        elif isinstance(node, ast.Import):
            modules.update(a.asname for a in node.names if a.name.startswith("bertbeam") and a.asname)
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and _private(node.attr)
                and isinstance(node.value, ast.Name) and node.value.id in modules):
            found.append(f"{node.lineno}: {node.value.id}.{node.attr}")
    return found


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_no_module_uses_another_modules_private_names():
    """Helpers other modules need are public in their module (``config.check_positive``)."""
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if found := private_imports(path, module):
            offenders[module] = found
    assert offenders == {}


def test_the_private_import_check_finds_both_forms(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("from bertbeam.config import _check_choice, EMBEDDED_MODEL\n"
                      "from bertbeam.run import checks\n"
                      "checks._helper()\nchecks.public()\n")
    assert private_imports(sample, "sample") == [
        "1: from bertbeam.config import _check_choice", "3: checks._helper"]


def unexplained_function_imports(path: Path) -> list[str]:
    """Imports inside functions without a one-line reason: a comment on the import's first
    line or on the line above it."""
    lines = path.read_text().splitlines()
    found = []

    def walk(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)) and in_function:
                above = lines[child.lineno - 2].strip() if child.lineno > 1 else ""
                if "#" not in lines[child.lineno - 1] and not above.startswith("#"):
                    found.append(f"{child.lineno}: {lines[child.lineno - 1].strip()}")
            walk(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))

    walk(ast.parse("\n".join(lines)), False)
    return found


def test_imports_inside_functions_say_why():
    """An import stays inside a function only to keep start-up light (torch, transformers,
    optional libraries) or to break a cycle, and says so; the others are at module level."""
    offenders = {str(p.relative_to(PACKAGE.parent)): found for p in sorted(PACKAGE.rglob("*.py"))
                 if (found := unexplained_function_imports(p))}
    assert offenders == {}


def test_the_function_import_check_finds_a_bare_one(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import os\n\ndef f():\n    import torch  # the model stack\n"
                      "    # Cloud Storage only\n    import gcsfs\n    import json\n")
    assert unexplained_function_imports(sample) == ["7: import json"]
