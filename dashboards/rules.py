"""Prometheus recording and alerting rules, generated from the config's SLO spec and thresholds.

The SLO group records the failed-generation ratio over every window and alerts on multi-window,
multi-burn-rate conditions; the operations group watches what the SLI cannot see (stuck jobs, latency,
refusals, a gateway that is down or silent); the delivery group watches the events delivered onward
(backlog, old pending deliveries, dead letters). Every alert carries ``severity`` (``critical`` pages,
``warning`` opens a ticket), a static ``summary``, a templated ``description`` and a ``runbook_url``.
"""

from __future__ import annotations

from typing import Any

from dashboards.config import Config, duration_seconds, humanize_seconds
from dashboards.promql import failed_ratio, failed_ratio_record, matchers, quantile

__all__ = ("alert_names", "delivery_group", "operations_group", "rule_file", "runbook_anchor", "slo_group")

Rule = dict[str, Any]
Group = dict[str, Any]

_KIND = "{{ $labels.kind }}"
_JOB = "{{ $labels.job }}"
_PERCENT = "{{ $value | humanizePercentage }}"
_DURATION = "{{ $value | humanizeDuration }}"


def _percent(ratio: float) -> str:
    return f"{ratio * 100:g}%"


def runbook_anchor(alert: str) -> str:
    """The anchor a Markdown renderer gives the runbook heading ``## <alert>``."""
    return alert.lower()


def _alert(
    config: Config,
    name: str,
    expr: str,
    for_: str,
    severity: str,
    summary: str,
    description: str,
    labels: dict[str, str] | None = None,
) -> Rule:
    alert = config.alert_prefix + name
    return {
        "alert": alert,
        "expr": expr,
        "for": for_,
        "labels": {"severity": severity, **(labels or {})},
        "annotations": {
            "summary": summary,
            "description": description,
            "runbook_url": f"{config.runbook_url}#{runbook_anchor(alert)}",
        },
    }


def slo_group(config: Config, name: str = "gateway-slo") -> Group:
    """The failed-generation ratio over every window, and the burn-rate alerts on it."""
    slo = config.slo
    rules: list[Rule] = [
        {"record": failed_ratio_record(window), "expr": failed_ratio(config.selector, window)} for window in slo.windows
    ]
    period_seconds = duration_seconds(slo.period)
    for burn in slo.burn_rates:
        threshold = f"({burn.factor:g} * {slo.budget:g})"
        expr = f"{failed_ratio_record(burn.long)} > {threshold}\nand\n{failed_ratio_record(burn.short)} > {threshold}"
        description = (
            f"{_KIND} jobs on {_JOB} failed at {_PERCENT} over the last {burn.long} and are still failing over the "
            f"last {burn.short}: {burn.factor:g} times the {_percent(slo.budget)} failure budget of the "
            f"{_percent(slo.objective)} SLO. At this rate the {slo.period} error budget is spent in "
            f"{humanize_seconds(period_seconds / burn.factor)}."
        )
        rules.append(
            _alert(
                config,
                "JobFailureBudgetBurn",
                expr,
                burn.for_,
                burn.severity,
                "Generation jobs are failing fast enough to burn the error budget.",
                description,
                {"long": burn.long, "short": burn.short},
            )
        )
    return {"name": name, "rules": rules}


def operations_group(config: Config, name: str = "gateway") -> Group:
    """Alerts on what the SLI does not show: stuck jobs, latency, refusals, a gateway down or silent."""
    sel = config.selector
    window = config.rule_window
    requests = f"sum by (job) (rate(gateway_webhook_requests_total{{{sel}}}[{window}]))"
    auth = f"sum by (job, reason) (rate(gateway_webhook_auth_failures_total{{{sel}}}[{window}]))"
    rejected_sel = matchers(sel, 'outcome=~"invalid|rate_limited|unregistered"')
    jwks_sel = matchers(sel, 'state=~"stale|unavailable"')
    rejected = f"sum by (job, outcome) (rate(gateway_webhook_requests_total{{{rejected_sel}}}[{window}]))"
    latency = quantile(0.99, "gateway_webhook_request_duration_seconds", sel, window, by="job")
    spike_rate = f"{config.spike_min_rate:g}"
    rules = [
        _alert(
            config,
            "JobsStuck",
            f"max by (job, kind) (gateway_job_oldest_in_progress_seconds{{{sel}}}) > {config.stuck_job_seconds:g}",
            config.stuck_job_for,
            "warning",
            "A generation job has been in progress for too long.",
            f"The oldest {_KIND} job still in progress on {_JOB} has waited {_DURATION} (threshold "
            f"{humanize_seconds(config.stuck_job_seconds)}): the backend may have lost it, or its final webhook "
            "never reached the gateway.",
        ),
        _alert(
            config,
            "WebhookLatencyHigh",
            f"{latency} > {config.latency_p99_seconds:g}",
            config.latency_for,
            "warning",
            "Webhooks are answered slowly.",
            f"The 99th percentile of webhook answer time on {_JOB} is {_DURATION} over the last {window} "
            f"(threshold {config.latency_p99_seconds:g}s): senders wait, and may time out and retry.",
        ),
        _alert(
            config,
            "WebhookAuthFailuresSpiking",
            f"{auth}\n  / on (job) group_left ()\n{requests}\n> {config.auth_failure_ratio:g}\n"
            f"and on (job, reason)\n{auth} > {spike_rate}",
            config.spike_for,
            "warning",
            "Many webhooks are refused as unauthenticated.",
            f"{_PERCENT} of webhooks to {_JOB} were refused with 401 for reason {{{{ $labels.reason }}}} over the "
            f"last {window} (threshold {_percent(config.auth_failure_ratio)}): a sender with a stale secret or "
            "key, a clock off by minutes, or someone probing the endpoint.",
        ),
        _alert(
            config,
            "WebhookRejectionsSpiking",
            f"{rejected}\n  / on (job) group_left ()\n{requests}\n> {config.rejection_ratio:g}\n"
            f"and on (job, outcome)\n{rejected} > {spike_rate}",
            config.spike_for,
            "warning",
            "Many webhooks are rejected as invalid, rate-limited or unregistered.",
            f"{_PERCENT} of webhooks to {_JOB} were answered {{{{ $labels.outcome }}}} over the last {window} "
            f"(threshold {_percent(config.rejection_ratio)}): the backend's payloads changed shape, or a sender "
            "is bursting past the rate limit, or (strict mode) the app stopped registering its jobs.",
        ),
        _alert(
            config,
            "Down",
            f"up{{{sel}}} == 0",
            config.down_for,
            "critical",
            "A gateway replica cannot be scraped.",
            f"Prometheus has failed to scrape {{{{ $labels.instance }}}} of {_JOB} for {config.down_for}: the "
            "replica is down or unreachable, and webhooks sent to it are not answered.",
        ),
        _alert(
            config,
            "Absent",
            f"absent(up{{{sel}}})",
            config.absent_for,
            "critical",
            "Prometheus has no gateway target.",
            f"Prometheus has had no target for {_JOB} for {config.absent_for}: the gateway is not deployed, "
            "or service discovery lost it, and nothing else here can alert on it.",
        ),
        _alert(
            config,
            "NoWebhooks",
            f"{requests} == 0",
            config.no_webhooks_for,
            "warning",
            "The gateway has received no webhook for a long time.",
            f"{_JOB} has received no webhook at all for {config.no_webhooks_for}: the backend may have stopped "
            "sending, or its traffic no longer reaches the gateway.",
        ),
        _alert(
            config,
            "JwksNotFresh",
            f"max by (job, sender, state) (gateway_jwks_state{{{jwks_sel}}}) == 1",
            config.jwks_not_fresh_for,
            "warning",
            "A sender's published signing keys cannot be fetched.",
            "The JWK Set of sender {{ $labels.sender }} on "
            f"{_JOB} has been {{{{ $labels.state }}}} for {config.jwks_not_fresh_for}: its jwks_url does not answer "
            "with ed25519 keys. Stale: the last good set still verifies, but a key the sender rotates in will not. "
            "Unavailable: none was ever fetched, and that sender's webhooks are answered 503.",
        ),
    ]
    return {"name": name, "rules": rules}


def delivery_group(config: Config, name: str = "gateway-delivery") -> Group:
    """Alerts on delivering accepted events onward: a growing backlog, old pending deliveries, dead letters.

    Backlog and age come from the shared outbox, so every replica reports the same value: ``max`` per sink
    (a ``sink`` label, when the gateway exports one), then summed, never summed across replicas.
    """
    sel = config.selector
    backlog = f"sum by (job) (max by (job, sink) (gateway_delivery_backlog{{{sel}}}))"
    window = config.delivery_backlog_window
    growth = f"sum by (job) (max by (job, sink) (delta(gateway_delivery_backlog{{{sel}}}[{window}])))"
    dead_sel = matchers(sel, 'result="dead"')
    dead = f"sum by (job) (increase(gateway_deliveries_total{{{dead_sel}}}[{config.dead_letter_window}]))"
    rules = [
        _alert(
            config,
            "DeliveryBacklogGrowing",
            f"{backlog} > {config.delivery_backlog_min:g}\nand on (job)\n{growth} > 0",
            config.delivery_backlog_for,
            "warning",
            "Deliveries pile up faster than they are delivered.",
            f"{_JOB} has {{{{ $value | humanize }}}} deliveries pending, and the backlog has kept growing over "
            f"the last {window} (floor {config.delivery_backlog_min:g}): a receiver is failing or slow, or the "
            "dispatcher cannot keep up with the events applied.",
        ),
        _alert(
            config,
            "DeliveryPendingTooLong",
            f"max by (job) (gateway_delivery_oldest_pending_seconds{{{sel}}}) > {config.delivery_pending_seconds:g}",
            config.delivery_pending_for,
            "warning",
            "An accepted event has waited too long to be delivered.",
            f"The oldest delivery still pending on {_JOB} has waited {_DURATION} (threshold "
            f"{humanize_seconds(config.delivery_pending_seconds)}): its receiver has not taken it, and the "
            "events of that job queue behind it.",
        ),
        _alert(
            config,
            "DeliveryDeadLetters",
            f"{dead} > 0",
            "0s",
            "warning",
            "Deliveries went to the dead letters.",
            f"Deliveries from {_JOB} went to the dead letters over the last {config.dead_letter_window} (about "
            "{{ $value | humanize }}): the receiver refused them for good, or their retry schedule ran out. "
            "They are not delivered until someone replays them.",
        ),
    ]
    return {"name": name, "rules": rules}


def rule_file(config: Config) -> dict[str, list[Group]]:
    """The rule file Prometheus loads: the SLO, operations and delivery groups."""
    return {"groups": [slo_group(config), operations_group(config), delivery_group(config)]}


def alert_names(document: dict[str, list[Group]]) -> list[str]:
    """Distinct alert names of a rule file, in order of appearance."""
    names = [rule["alert"] for group in document["groups"] for rule in group["rules"] if "alert" in rule]
    return list(dict.fromkeys(names))
