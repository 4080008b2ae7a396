"""The README is the user's first contact: its quick start, CI command and settings must match the code."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def quick_start_commands() -> list[str]:
    section = README.split("## Quick start", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert block is not None, "no fenced sh block under ## Quick start"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_quick_start_is_exactly_two_commands() -> None:
    serve, test = quick_start_commands()
    assert serve.endswith("gateway serve")
    assert "pytest" in test


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    test_command = quick_start_commands()[1]
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command in ci_lines


def test_every_setting_read_from_the_environment_is_documented() -> None:
    config = (ROOT / "gateway" / "config.py").read_text()
    variables = set(re.findall(r'get\("([A-Z_]+)"\)', config))
    assert {"GATEWAY_ENV", "WEBHOOK_SECRET", "DATABASE_URL"} <= variables
    table = README.split("## Configuration", 1)[1]
    missing = sorted(name for name in variables if f"`{name}`" not in table)
    assert not missing, f"undocumented settings: {missing}"
