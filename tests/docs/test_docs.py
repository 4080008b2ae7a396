"""The README is the user's first contact and the site (mkdocs.yml, docs/) everything after it: the quick
start, the CI command and the site's build must hold, and the generated reference pages must match the code."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

from dashboards.config import docs_site_url
from docs import generate

ROOT = Path(__file__).resolve().parents[2]
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


# --- The generated reference pages (docs/generate.py): committed, and equal to what the code says. ---

REFERENCE = ROOT / "docs" / "reference"
DOC_PAGES = sorted((ROOT / "docs").rglob("*.md"))


def prose() -> str:
    """Every hand-written page and the README: where a name can be mentioned that the code lacks."""
    pages = [page for page in DOC_PAGES if page.parent != REFERENCE]
    return "\n".join(page.read_text() for page in [*pages, ROOT / "README.md"])


def test_committed_reference_pages_are_what_the_generator_writes() -> None:
    for name, text in generate.render().items():
        committed = (REFERENCE / name).read_text()
        assert committed == text, f"docs/reference/{name} is stale: run python -m docs.generate"


def test_every_setting_read_from_the_environment_is_documented_and_every_documented_one_is_read() -> None:
    """The variables ``Settings.from_env`` looks up (seen by running it) are those the declaration names,
    each on one field, and the committed page has each one's heading."""
    read = generate.environment_names()
    assert {"GATEWAY_ENV", "WEBHOOK_SECRET", "DATABASE_URL", "GATEWAY_RATE_LIMIT_BURST"} <= read
    declared = [name for setting in generate.settings() for name in setting.names]
    assert len(declared) == len(set(declared)), "a variable is declared on two fields"
    undescribed = [setting.field for setting in generate.settings() if not setting.text]
    assert not undescribed, f"Settings fields declared without a description: {undescribed}"
    assert sorted(read - set(declared)) == [], "read but not declared on a Settings field"
    assert sorted(set(declared) - read) == [], "declared but never read by Settings.from_env"
    page = (REFERENCE / "configuration.md").read_text()
    headings = set(re.findall(r"^## (.+)$", page, re.MULTILINE))
    assert all(any(f"`{name}`" in heading for heading in headings) for name in read)


def test_every_variable_the_docs_name_exists() -> None:
    """`GATEWAY_*`/`WEBHOOK_*` names in the prose are settings (or the test suite's own knobs)."""
    known = generate.environment_names() | {
        "GATEWAY_FUZZ_EXAMPLES",
        "GATEWAY_CI_TOOLS",
        "GATEWAY_LOAD_SECONDS",
        "GATEWAY_SOAK_SECONDS",
    }
    named = set(re.findall(r"\b((?:GATEWAY|WEBHOOK)_[A-Z][A-Z0-9_]*[A-Z0-9])\b", prose()))
    named -= {"GATEWAY_JOBS", "GATEWAY_JOBS_STAGING"}  # JetStream stream names, not variables
    assert sorted(named - known) == []


def test_metrics_catalogue_lists_every_metric_and_the_docs_name_no_other() -> None:
    families = {family["name"]: family for family in generate.metric_families()}
    assert {"gateway_webhook_requests_total", "gateway_deliveries_total", "gateway_build_info"} <= set(families)
    page = (REFERENCE / "metrics.md").read_text()
    assert set(re.findall(r"^\| `(gateway_[a-z_]+)`", page, re.MULTILINE)) == set(families)
    suffixes = ("", "_bucket", "_sum", "_count")
    exposed = {name + suffix for name in families for suffix in suffixes}
    # Metric names in the prose, recording rules' names (`level:metric:operations`) aside.
    named = set(re.findall(r"(?<![:\w])(gateway_[a-z_]+)(?![:\w])", prose()))
    not_metrics = {"gateway_session"}  # the session cookie
    assert sorted(named - exposed - not_metrics) == []


def test_http_reference_has_every_route_and_the_docs_name_no_other() -> None:
    app, _ = generate.built_app()
    document = app.openapi_schema.to_schema()
    page = (REFERENCE / "http-api.md").read_text()
    for path, item in document["paths"].items():
        for method in item:
            assert f"## {method.upper()} {path}\n" in page
    outside = generate.undocumented_routes(app, document)
    assert {"/status", "/api/webhooks/{name}"} <= set(outside)
    for path, methods in outside.items():
        assert f"| `{path}` | {', '.join(sorted(methods))} |" in page
    routes = {(method, path) for path, methods in generate.app_routes(app).items() for method in methods}
    assert {("*", "/api/webhooks/image-completion"), ("GET", "/api/jobs/{job_id}")} <= routes
    mentioned = set(re.findall(r"\b(GET|POST|PUT|PATCH|DELETE) (/[\w/{}.-]*[\w}]|/)(?![\w/{}-]|\.\.\.)", prose()))
    unknown = sorted((method, path) for method, path in mentioned if not {(method, path), ("*", path)} & routes)
    assert unknown == [], "the docs name routes the app does not have"


def test_cli_reference_has_every_command_and_the_docs_name_no_other() -> None:
    commands = {name for name, _ in generate.cli_commands()}
    assert {"gateway serve", "gateway migrate", "gateway send", "gateway deliveries replay"} <= commands
    page = (REFERENCE / "cli.md").read_text()
    assert set(re.findall(r"^## `(gateway[a-z ]*)`$", page, re.MULTILINE)) == commands
    subcommands = {name.split()[1] for name in commands if name != "gateway"}
    named = set(re.findall(r"`gateway ([a-z]+)\b", prose()))
    assert sorted(named - subcommands) == []


def test_every_test_the_threat_model_names_exists() -> None:
    """docs/security.md backs each statement with ``test_file.py::test_name``: a renamed or deleted test
    would leave a claim with nothing behind it."""
    text = (ROOT / "docs" / "security.md").read_text()
    named = re.findall(r"`(test_\w+\.py)::(\w+)`", text)
    assert len(named) > 50
    modules = {path.name: path for path in (ROOT / "tests").rglob("test_*.py")}  # tests/ mirrors the package
    missing = [
        f"{module}::{name}"
        for module, name in named
        if module not in modules
        or not re.search(rf"^\s*(async )?def {name}\(", modules[module].read_text(), re.MULTILINE)
    ]
    assert not missing, f"docs/security.md names tests that do not exist: {missing}"


# --- docs/architecture.md: the module map and the layers cannot go stale silently. ---

ARCHITECTURE = (ROOT / "docs" / "architecture.md").read_text()


def module_map() -> list[str]:
    """The paths the map under ``## The modules`` names, each joined to the folders above it."""
    block = re.search(r"^## The modules\n\n```\n(.*?)^```", ARCHITECTURE, re.MULTILINE | re.DOTALL)
    assert block is not None, "no fenced block under ## The modules"
    paths: list[str] = []
    folders: list[tuple[int, str]] = []  # (indent, path) of the folders the next lines may sit in
    for line in block.group(1).splitlines():
        name = line.split(maxsplit=1)[0] if line.strip() else ""
        if not name.endswith((".py", "/")):
            continue  # a description carried over from the line above
        indent = len(line) - len(line.lstrip())
        while folders and folders[-1][0] >= indent:
            folders.pop()
        path = (folders[-1][1] if folders else "") + name
        paths.append(path)
        if name.endswith("/"):
            folders.append((indent, path))
    return paths


def test_the_module_map_names_every_module_and_only_paths_that_exist() -> None:
    named = module_map()
    assert "gateway/ingest/pipeline.py" in named
    modules = sorted(
        path.relative_to(ROOT).as_posix() for path in (ROOT / "gateway").rglob("*.py") if path.name != "__init__.py"
    )
    missing = [module for module in modules if module not in named]
    assert not missing, f"docs/architecture.md's module map leaves out {missing}"
    absent = [path for path in named if not (ROOT / path).exists()]
    assert not absent, f"docs/architecture.md's module map names paths that do not exist: {absent}"
    tests = sorted(set(re.findall(r"`(tests/[\w/.]+)`", ARCHITECTURE)))
    assert "tests/ingest/test_decode.py" in tests
    assert not [path for path in tests if not (ROOT / path).exists()], "docs/architecture.md names missing tests"


def test_the_layers_diagram_is_the_import_linter_contract() -> None:
    """The diagram under ``## Imports only point down`` lists pyproject.toml's layers, top to bottom."""
    contract = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"][0]
    layers = [{name.strip().removeprefix("gateway.") for name in layer.split("|")} for layer in contract["layers"]]
    section = ARCHITECTURE.split("## Imports only point down", 1)[1]
    diagram = re.search(r"```mermaid\n(.*?)```", section, re.DOTALL)
    assert diagram is not None
    drawn = [
        {name.strip() for name in step.split("|")}
        for node in re.findall(r'\["\w+: (.*?)"\]', diagram.group(1))
        for step in node.replace(",<br/>", ", ").split(", then ")
    ]
    assert drawn == layers
