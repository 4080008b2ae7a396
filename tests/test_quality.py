"""The code checks every change must pass: ruff on everything, mypy --strict on the package, the layers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, check=False)


def test_ruff_lint_is_clean() -> None:
    result = run("ruff", "check", "gateway", "tests", "benchmarks", "dashboards")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_is_clean() -> None:
    result = run("ruff", "format", "--check", "gateway", "tests", "benchmarks", "dashboards")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_is_clean() -> None:
    result = run("mypy", "--strict", "gateway")
    assert result.returncode == 0, result.stdout + result.stderr


def test_layers_only_point_down() -> None:
    """The ``[tool.importlinter]`` layers contract in pyproject.toml holds (TYPE_CHECKING imports count)."""
    lint_imports = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(lint_imports), "--no-cache"], cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_no_import_cycle_in_gateway() -> None:
    """No module of gateway imports, directly or not, a module that imports it back."""
    graph = grimp.build_graph("gateway", cache_dir=None)
    cycles = [
        (module, imported, chain)
        for module in sorted(graph.modules)
        for imported in sorted(graph.find_modules_directly_imported_by(module))
        if (chain := graph.find_shortest_chain(importer=imported, imported=module)) is not None
    ]
    assert cycles == []
