"""Write every generated file: ``python -m dashboards.generate`` (or ``--check`` to fail on drift).

The output is deterministic (sorted JSON keys, YAML in a fixed order), so the committed files change only
when the config or the generator does, and a test regenerates into a temporary directory to prove the
committed copies are current.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from dashboards.boards import BOARDS
from dashboards.config import CONFIG, FAST_TEST_CONFIG, Config
from dashboards.kubernetes import deploy_files
from dashboards.provision import dashboard_provider, datasources
from dashboards.rules import rule_file, slo_group
from dashboards.yamlout import GENERATED_HEADER, dump

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ("DEPLOY_ROOT", "ROOT", "main", "render", "render_deploy")

ROOT = Path(__file__).resolve().parent
"""The ``dashboards/`` directory: generated paths are relative to it."""
DEPLOY_ROOT = ROOT.parent / "deploy" / "kubernetes" / "base"
"""The Kubernetes base: its generated copies (``render_deploy``) are relative to it."""

FAST_TEST_HEADER = GENERATED_HEADER + (
    "# TEST ONLY: the SLO rules with windows of seconds (FAST_TEST_CONFIG), for "
    "tests/dashboards/test_prometheus_e2e.py.\n"
    "# Never load this file into a real Prometheus: it would page on a few seconds of failures.\n"
)


def render(config: Config = CONFIG, fast_config: Config = FAST_TEST_CONFIG) -> dict[str, str]:
    """Every generated file's text by its path relative to ``dashboards/``."""
    files = {
        f"grafana/{uid}.json": json.dumps(build(config), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        for uid, build in BOARDS.items()
    }
    rules = rule_file(config)
    fast = {"groups": [slo_group(fast_config, name="gateway-slo-fast-test")]}
    records = {rule["record"] for group in rules["groups"] for rule in group["rules"] if "record" in rule}
    clashes = records & {rule["record"] for rule in fast["groups"][0]["rules"] if "record" in rule}
    if clashes:
        raise ValueError(f"the fast test rules would overwrite recorded series of the real ones: {sorted(clashes)}")
    files["prometheus/rules.yml"] = dump(rules)
    files["prometheus/rules-fast-test.yml"] = dump(fast, header=FAST_TEST_HEADER)
    files["provisioning/datasources/gateway.yml"] = dump(datasources(config))
    files["provisioning/dashboards/gateway.yml"] = dump(dashboard_provider(config))
    return files


def render_deploy(config: Config = CONFIG) -> dict[str, str]:
    """The Kubernetes base's generated files (the PrometheusRule, the dashboards' JSON) by path relative
    to ``deploy/kubernetes/base/``."""
    dashboards = {relative: text for relative, text in render(config).items() if relative.startswith("grafana/")}
    return deploy_files(config, dashboards)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dashboards.generate", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT, help="directory to write into (default: dashboards/)")
    parser.add_argument(
        "--deploy-out",
        type=Path,
        default=None,
        help="directory the Kubernetes base's copies go to (default: deploy/kubernetes/base/, unless --out is given)",
    )
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file differs")
    args = parser.parse_args(argv)
    deploy_out = args.deploy_out if args.deploy_out is not None or args.out != ROOT else DEPLOY_ROOT
    outputs = [(args.out, relative, text) for relative, text in render().items()]
    if deploy_out is not None:
        outputs += [(deploy_out, relative, text) for relative, text in render_deploy().items()]
    stale = []
    for out, relative, text in outputs:
        path = out / relative
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        stale.append(str(path))
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    if args.check and stale:
        print(f"out of date (run python -m dashboards.generate): {', '.join(stale)}", file=sys.stderr)
        return 1
    for path_text in stale:
        print(f"wrote {path_text}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
