"""The README is the user's first contact and the site (mkdocs.yml, docs/) everything after it: the quick
start, the CI command and the site's build must hold, and the generated reference pages must match the code."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dashboards.config import docs_site_url

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


def test_readme_is_a_front_door_whose_links_exist() -> None:
    assert len(README.splitlines()) <= 160, "the README is the front door: details belong in docs/"
    targets = re.findall(r"\]\((?!https?://|#)([^)#\s]+)", README)
    assert "docs/images/status-page.png" in targets
    missing = [target for target in targets if not (ROOT / target).exists()]
    assert not missing, f"README links to missing files: {missing}"


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    """`mkdocs build --strict`: no broken link or anchor, no page left out of the navigation."""
    pytest.importorskip("mkdocs", reason="the docs extra is not installed (pip install -e '.[docs]')")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    warnings = [line for line in result.stderr.splitlines() if line.startswith(("WARNING", "ERROR"))]
    assert result.returncode == 0, "\n".join(warnings) or result.stderr[-2000:]
    assert (tmp_path / "site" / "architecture" / "index.html").exists()
    # Every alert's runbook_url is a page and heading of this site, at its site_url.
    site_url = docs_site_url()
    urls = {
        rule["annotations"]["runbook_url"]
        for group in yaml.safe_load((ROOT / "dashboards" / "prometheus" / "rules.yml").read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    assert urls
    for url in urls:
        assert url.startswith(site_url), url
        page, _, anchor = url.removeprefix(site_url).partition("#")
        html = (tmp_path / "site" / page / "index.html").read_text()
        assert f'id="{anchor}"' in html, f"{url}: no such heading on the site"
