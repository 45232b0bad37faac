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


APP = {"freebies.config", "freebies.cli", "freebies.engine", "freebies.build"}
TASKS = {"freebies.classify", "freebies.detect"}


def imports_of(path: Path) -> list[str]:
    """Every module `path` imports, lazily or not (from X import y counts as X and X.y)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names]
    return names


def test_library_layers_import_no_application_module():
    """tricks, optim, models, data and detection take plain arguments: they never import the
    recipe config, the CLI, the engine or a task (checked on the source, so lazy imports count
    too)."""
    found = []
    for layer in ("tricks", "optim", "models", "data", "detection"):
        for path in sorted((SRC / layer).rglob("*.py")):
            bad = [n for n in imports_of(path) if n in APP | TASKS]
            found += [f"{path.relative_to(SRC)} imports {n}" for n in bad]
    assert not found, "; ".join(found)


def test_shared_modules_import_no_cli_and_no_task():
    """The engine, the set-up, evaluation and the checkpoint serve every task: none of them
    imports the CLI or a task module (a task imports them, never the other way round)."""
    found = []
    for name in ("engine", "build", "evaluate", "checkpoint", "config", "deploy", "runtime"):
        path = SRC / f"{name}.py"
        bad = [n for n in imports_of(path) if n in TASKS | {"freebies.cli"}]
        found += [f"{name}.py imports {n}" for n in bad]
    assert not found, "; ".join(found)


def test_the_two_tasks_do_not_import_each_other():
    for a, b in (("classify", "detect"), ("detect", "classify")):
        assert f"freebies.{b}" not in imports_of(SRC / f"{a}.py"), f"{a}.py imports {b}"
