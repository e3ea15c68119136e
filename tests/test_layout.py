"""The package's shape: concerns import each other in one direction only, and nothing outside ``anytime`` is a
Python package (``server/`` and ``clients/`` hold files people run)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "anytime"
# Modules at the package root that every concern may use, and the orchestrators that may use every concern.
SHARED = {"config", "files", "imaging", "options", "testing", "__init__", "__main__"}
ORCHESTRATORS = {"cli", "demo"}
# Files the exporter copies into a Triton repository as model.py: Triton's python stub runs them, the package
# never imports them (the progressive one runs anytime.serving's stage engine inside Triton).
TRITON_MODELS = {"triton_python_model.py", "triton_progressive_model.py"}


def concern_imports() -> dict[str, set[str]]:
    """concern -> the concerns its modules import (at any depth: module level or inside functions)."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        if path.name in TRITON_MODELS:
            continue
        rel = path.relative_to(PACKAGE)
        concern = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        if concern in SHARED | ORCHESTRATORS:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else []
            for name in names:
                parts = name.split(".")
                if parts[0] == "anytime" and len(parts) > 1 and parts[1] not in SHARED and parts[1] != concern:
                    if parts[1] in ORCHESTRATORS and parts[2:3] == [] and name == "anytime.cli":
                        continue  # UserError: the CLI's error type, raised by command handlers
                    graph.setdefault(concern, set()).add(parts[1])
    return graph


def test_concerns_import_each_other_in_one_direction_only():
    graph = concern_imports()
    seen, path = set(), []

    def visit(node):
        assert node not in path, f"import cycle between concerns: {' -> '.join(path[path.index(node):] + [node])}"
        if node in seen:
            return
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            visit(nxt)
        path.pop()
        seen.add(node)

    for concern in sorted(graph):
        visit(concern)
    assert "serving" not in graph.get("export", set())  # serving builds on export, never the reverse
    assert graph.get("clients", set()) <= {"serving", "eval", "data"}


def test_only_anytime_is_a_python_package():
    assert not (ROOT / "server" / "__init__.py").exists() and not (ROOT / "clients" / "__init__.py").exists()
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'include = ["anytime*"]' in pyproject
