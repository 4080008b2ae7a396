"""The one config object every dashboard, recording rule and alert is generated from.

Change a threshold, the SLO objective or a selector here and regenerate (``python -m dashboards.generate``):
the rules and the dashboards move together, like a mixin's ``config.libsonnet``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

__all__ = (
    "CONFIG",
    "FAST_TEST_CONFIG",
    "BurnRate",
    "Config",
    "Slo",
    "docs_site_url",
    "duration_seconds",
    "humanize_seconds",
)

Severity = Literal["critical", "warning"]

_DURATION = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
_MKDOCS = Path(__file__).resolve().parent.parent / "mkdocs.yml"


def docs_site_url(mkdocs_yml: Path = _MKDOCS) -> str:
    """The documentation site's address: ``site_url`` of ``mkdocs.yml``, ending in ``/``.

    The one setting behind both the published site and every alert's runbook link; ``ValueError`` when
    the file has no top-level ``site_url``.
    """
    match = re.search(r"^site_url:\s*(\S+)\s*$", mkdocs_yml.read_text(), re.MULTILINE)
    if match is None:
        raise ValueError(f"{mkdocs_yml} sets no site_url")
    return match.group(1).rstrip("/") + "/"


def duration_seconds(duration: str) -> float:
    """Seconds in a Prometheus duration such as ``5m``, ``1h30m`` or ``30d``; ``ValueError`` otherwise."""
    parts = _DURATION.findall(duration)
    if not duration or "".join(number + unit for number, unit in parts) != duration:
        raise ValueError(f"not a Prometheus duration: {duration!r}")
    return sum(int(number) * _UNIT_SECONDS[unit] for number, unit in parts)


def humanize_seconds(seconds: float) -> str:
    """A short human reading of a duration for alert text: ``1 hour``, ``50 hours``, ``5 days``."""
    units = (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1))
    exact = next(((unit, size) for unit, size in units if seconds >= size and seconds % size == 0), None)
    unit, size = exact or next(((u, s) for u, s in units if seconds >= 3 * s), units[-1])
    amount = round(seconds / size)
    return f"{amount} {unit}{'s' if amount != 1 else ''}"


@dataclass(frozen=True, slots=True)
class BurnRate:
    """One multi-window burn-rate alert: both windows above ``factor`` x the error budget.

    The long window says the budget is really burning; the short one makes the alert resolve soon after
    the failures stop (Google SRE workbook, chapter "Alerting on SLOs").
    """

    severity: Severity
    long: str
    short: str
    factor: float
    for_: str
    """How long both windows must stay above the threshold before the alert fires."""


@dataclass(frozen=True, slots=True)
class Slo:
    """The failed-generation SLO: ``objective`` of the jobs that complete or fail succeed over ``period``
    (a canceled job is neither: it counts on neither side of the ratio)."""

    objective: float = 0.99
    period: str = "30d"
    burn_rates: tuple[BurnRate, ...] = (
        BurnRate("critical", "1h", "5m", 14.4, "2m"),
        BurnRate("critical", "6h", "30m", 6.0, "15m"),
        BurnRate("warning", "1d", "2h", 3.0, "1h"),
        BurnRate("warning", "3d", "6h", 1.0, "3h"),
    )

    def __post_init__(self) -> None:
        if not 0 < self.objective < 1:
            raise ValueError(f"SLO objective must be between 0 and 1 (exclusive), got {self.objective}")
        for window in (self.period, *(w for rate in self.burn_rates for w in (rate.long, rate.short, rate.for_))):
            if window != "0s":
                duration_seconds(window)

    @property
    def budget(self) -> float:
        """The share of completed and failed jobs allowed to fail (``1 - objective``), without float noise."""
        return round(1 - self.objective, 10)

    @property
    def windows(self) -> tuple[str, ...]:
        """Every window an error ratio is recorded over, shortest first: the burn-rate windows and the period."""
        windows = {w for rate in self.burn_rates for w in (rate.long, rate.short)} | {self.period}
        return tuple(sorted(windows, key=duration_seconds))


@dataclass(frozen=True, slots=True)
class Config:
    """Selectors, the SLO, thresholds and windows of every generated artefact.

    Durations are Prometheus durations (``5m``); thresholds are in base units (seconds, ratios 0-1).
    """

    job: str = "gateway"
    """The Prometheus scrape job of the gateway; rules select ``job="<job>"``."""
    alert_prefix: str = "Gateway"
    """Every alert name starts with it, so routes and silences can match them all."""
    slo: Slo = field(default_factory=Slo)
    rule_window: str = "5m"
    """Rate window of the latency, authentication and rejection alerts."""
    stuck_job_seconds: float = 3600
    """A job in a non-terminal status for longer than this is stuck (image jobs take minutes)."""
    stuck_job_for: str = "5m"
    latency_p99_seconds: float = 0.5
    """Webhook p99 latency above this (answers usually take milliseconds) means the store is struggling."""
    latency_for: str = "10m"
    auth_failure_ratio: float = 0.1
    """Share of webhooks refused as unauthenticated, per reason, that counts as a spike."""
    rejection_ratio: float = 0.05
    """Share of webhooks refused as invalid or rate-limited, per outcome, that counts as a spike."""
    spike_min_rate: float = 0.05
    """Refusals per second below which a high ratio is noise (a handful of webhooks), not a spike."""
    spike_for: str = "10m"
    down_for: str = "2m"
    absent_for: str = "5m"
    no_webhooks_for: str = "1h"
    """How long without a single webhook before someone should look at the sender."""
    jwks_not_fresh_for: str = "15m"
    """How long a sender's JWK Set may go unrefreshed (stale, or never fetched) before someone looks."""
    delivery_backlog_min: float = 100
    """Pending deliveries below this are ordinary traffic in flight, whatever their trend."""
    delivery_backlog_window: str = "15m"
    """Window over which a backlog above the floor must keep growing to raise the backlog alert."""
    delivery_backlog_for: str = "15m"
    delivery_pending_seconds: float = 1800
    """A delivery pending for longer than this means the receiver has missed events for that long (the
    retry schedule's first attempts span about half an hour)."""
    delivery_pending_for: str = "5m"
    dead_letter_window: str = "15m"
    """A dead letter keeps its alert firing for this long, so one dead delivery is not lost between
    evaluations; the alert resolves by itself once no new one appears."""
    runbook_url: str = field(default_factory=lambda: docs_site_url() + "runbooks/")
    """Base of every alert's ``runbook_url``: the runbooks page (``docs/runbooks.md``, one heading per alert)
    of the documentation site, whose address is ``site_url`` in ``mkdocs.yml``."""
    prometheus_uid: str = "prometheus"
    """Grafana uid of the provisioned Prometheus datasource (the dashboards' default)."""
    traces_uid: str = "traces"
    """Grafana uid of the provisioned trace datasource that exemplars link to."""
    prometheus_url: str = "http://prometheus:9090"
    """Where Grafana reaches Prometheus (the docker-compose service)."""
    traces_url: str = "http://jaeger:16686"
    """Where Grafana reaches the trace backend's query API (Jaeger, in the docker-compose stack)."""
    dashboards_path: str = "/etc/grafana/dashboards/gateway"
    """Where Grafana's file provider reads the generated dashboards (mounted from dashboards/grafana)."""
    scrape_interval: str = "15s"
    """Prometheus' scrape interval, told to Grafana so ``$__rate_interval`` is at least four scrapes."""
    folder: str = "Gateway"
    """Grafana folder the dashboards are provisioned into."""

    @property
    def selector(self) -> str:
        """The label matchers that select the gateway's own series in rules."""
        return f'job="{self.job}"'


CONFIG = Config()
"""What ``python -m dashboards.generate`` renders and the committed files contain."""

FAST_TEST_CONFIG = replace(
    CONFIG,
    slo=replace(
        CONFIG.slo,
        period="4m",
        burn_rates=(
            BurnRate("critical", "30s", "10s", 14.4, "2s"),
            BurnRate("critical", "1m", "20s", 6.0, "2s"),
            BurnRate("warning", "2m", "40s", 3.0, "2s"),
            BurnRate("warning", "3m", "1m", 1.0, "2s"),
        ),
    ),
)
"""The same SLO with windows of seconds, for the end-to-end test on a real Prometheus. Not for deployment."""
