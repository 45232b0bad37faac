"""House rules that hold for every task: short functions, library layers that stand alone."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "freebies"
MAX_LINES = 100


def test_no_function_in_src_is_longer_than_100_lines():
    long = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_LINES:
                    long.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name} ({lines})")
    assert not long, "split these functions: " + ", ".join(long)


def test_library_layers_import_no_application_module():
    """tricks, optim and models take plain arguments: they never import the recipe config,
    the CLI, the engine or a task (checked on the source, so lazy imports count too)."""
    app = {"freebies.config", "freebies.cli", "freebies.engine", "freebies.train", "freebies.build"}
    found = []
    for layer in ("tricks", "optim", "models"):
        for path in sorted((SRC / layer).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                names = []
                if isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                elif isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                found += [f"{path.relative_to(SRC)} imports {n}" for n in names if n in app]
    assert not found, "; ".join(found)
