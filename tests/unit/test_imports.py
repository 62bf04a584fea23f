"""The allowed import directions (docs/ARCHITECTURE.md, "Parts and import rules"), read from
each module's source with ``ast`` (nothing is imported): core modules import neither Ray nor the
actors nor the CLI; actor modules import neither the CLI, the report nor the proxy."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "rayfly"

CORE = (
    "task",
    "version",
    "storage",
    "eviction",
    "source",
    "source_http",
    "source_s3",
    "scheduling",
    "errors",
    "config",
    "dest",
    "nodes",
    "filters",
    "ratelimit",
    "identity",
    "protocol",
    "scheduler_core",
    "durable",
)
CORE_FORBIDDEN = ("ray", "rayfly.actors", "rayfly.cli")
ACTOR_FORBIDDEN = ("rayfly.cli", "rayfly.report", "rayfly.proxy")


def imported(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (``from rayfly import x`` counts as
    ``rayfly.x``)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def violations(path: Path, forbidden: tuple[str, ...]) -> list[str]:
    return sorted(m for m in imported(path) for f in forbidden if m == f or m.startswith(f + "."))


@pytest.mark.parametrize("name", CORE)
def test_core_modules_import_no_ray_actors_or_cli(name):
    path = PKG / f"{name}.py"
    assert path.is_file(), f"core module {name} is gone: update CORE and docs/ARCHITECTURE.md"
    assert violations(path, CORE_FORBIDDEN) == []


@pytest.mark.parametrize("path", sorted((PKG / "actors").glob("*.py")), ids=lambda p: p.stem)
def test_actor_modules_import_no_cli_report_or_proxy(path):
    assert violations(path, ACTOR_FORBIDDEN) == []


def test_the_rule_catches_a_forbidden_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from rayfly import cli\n    import ray.util\n")
    assert violations(bad, CORE_FORBIDDEN) == ["ray.util", "rayfly.cli"]


MAX_FUNCTION_LINES = 50


def test_no_function_in_rayfly_is_over_50_lines():
    long = []
    for path in sorted(PKG.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(PKG.parent)}:{node.lineno} {node.name} {lines}")
    assert long == [], "split these functions: " + ", ".join(long)
