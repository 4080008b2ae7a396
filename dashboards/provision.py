"""Grafana provisioning: the Prometheus and trace datasources, and the folder the dashboards land in."""

from __future__ import annotations

from typing import Any

from dashboards.config import Config

__all__ = ("dashboard_provider", "datasources")


def datasources(config: Config) -> dict[str, Any]:
    """Prometheus (the dashboards' default) with exemplars linked to the trace datasource by ``trace_id``."""
    return {
        "apiVersion": 1,
        "datasources": [
            {
                "name": "Prometheus",
                "uid": config.prometheus_uid,
                "type": "prometheus",
                "access": "proxy",
                "url": config.prometheus_url,
                "isDefault": True,
                "editable": False,
                "jsonData": {
                    "httpMethod": "POST",
                    # $__rate_interval is at least four of these: it must be the real scrape interval.
                    "timeInterval": config.scrape_interval,
                    # The gateway's exemplars carry trace_id (see README: Telemetry); a click opens the trace.
                    "exemplarTraceIdDestinations": [{"name": "trace_id", "datasourceUid": config.traces_uid}],
                },
            },
            {
                "name": "Traces",
                "uid": config.traces_uid,
                "type": "jaeger",
                "access": "proxy",
                "url": config.traces_url,
                "editable": False,
            },
        ],
    }


def dashboard_provider(config: Config) -> dict[str, Any]:
    """A file provider that loads every generated dashboard into one folder, read-only."""
    return {
        "apiVersion": 1,
        "providers": [
            {
                "name": "gateway",
                "folder": config.folder,
                "type": "file",
                "disableDeletion": True,
                "allowUiUpdates": False,
                "updateIntervalSeconds": 30,
                "options": {"path": config.dashboards_path},
            }
        ],
    }
