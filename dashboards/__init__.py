"""Grafana dashboards, Prometheus recording and alerting rules for the gateway, generated from one config.

Everything an SRE deploys next to the gateway is produced by code from :data:`dashboards.config.CONFIG`
(selectors, the SLO, thresholds, windows), the way monitoring mixins ship with the service they watch,
so a dashboard and the alert that pages never disagree about what a metric means. Regenerate with
``python -m dashboards.generate``; the output is committed and a test fails when it drifts.
"""

__all__: tuple[str, ...] = ()
