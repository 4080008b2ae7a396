"""The Prometheus Operator's and Grafana sidecar's copies of the generated rules and dashboards.

Kustomize reads nothing outside its directory, so the Kubernetes base (``deploy/kubernetes/base/``)
ships copies: a ``PrometheusRule`` whose groups are exactly ``prometheus/rules.yml``'s, and the
dashboards' JSON, byte for byte, which the base's ``configMapGenerator`` turns into ConfigMaps
labelled ``grafana_dashboard: "1"``. Both come from the same ``render`` as the originals, so a
regeneration moves them together and the drift test covers them.
"""

from __future__ import annotations

from typing import Any

from dashboards.config import Config
from dashboards.rules import rule_file
from dashboards.yamlout import GENERATED_HEADER, dump

__all__ = ("RULE_NAME", "deploy_files", "prometheus_rule")

RULE_NAME = "gateway-rules"
"""``metadata.name`` of the generated PrometheusRule."""


def prometheus_rule(config: Config) -> dict[str, Any]:
    """The PrometheusRule object carrying every group of the rule file, unchanged."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": RULE_NAME, "labels": {"app.kubernetes.io/name": "gateway"}},
        "spec": rule_file(config),
    }


def deploy_files(config: Config, dashboards: dict[str, str]) -> dict[str, str]:
    """Every generated file of the Kubernetes base, by path relative to ``deploy/kubernetes/base/``.

    ``dashboards`` maps ``grafana/<uid>.json`` to its text, as ``render`` made it for ``dashboards/``.
    """
    header = (
        GENERATED_HEADER
        + "# The groups are dashboards/prometheus/rules.yml's (tests/deploy/test_deploy.py checks it).\n"
    )
    files = {"generated/prometheusrule.yaml": dump(prometheus_rule(config), header=header)}
    for relative, text in dashboards.items():
        files[f"generated/dashboards/{relative.removeprefix('grafana/')}"] = text
    return files
