"""Gateway overview: what the gateway answers, how fast, what it refuses, what it delivers onward, and whether
it is up."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from grafana_foundation_sdk.models.dashboard import DynamicConfigValue

from dashboards.panels import Board, query, stat, timeseries
from dashboards.promql import DASHBOARD_SELECTOR as SEL
from dashboards.promql import matchers, quantile

if TYPE_CHECKING:
    from dashboards.config import Config

__all__ = ("overview",)

RI = "$__rate_interval"
REQUESTS = f"sum(rate(gateway_webhook_requests_total{{{SEL}}}[{RI}]))"
REFUSED = "invalid|conflict|unregistered|rate_limited|too_large|unsupported_media_type"
DEAD = matchers(SEL, 'result="dead"')
SENDER = 'sender=~"$sender"'


def _rate(metric: str, *extra: str, by: str = "") -> str:
    grouping = f" by ({by})" if by else ""
    return f"sum{grouping} (rate({metric}{{{matchers(SEL, *extra)}}}[{RI}]))"


def overview(config: Config) -> dict[str, Any]:
    """The dashboard on-call opens first."""
    latency = "gateway_webhook_request_duration_seconds"
    accepted = _rate("gateway_webhook_requests_total", 'outcome=~"applied|duplicate|stale"')
    refused = _rate("gateway_webhook_requests_total", f'outcome=~"{REFUSED}"', by="outcome")
    unauthorized = _rate("gateway_webhook_auth_failures_total", by="reason")
    repeated = _rate("gateway_webhook_requests_total", 'outcome=~"duplicate|stale"', by="kind, outcome")
    board = Board(
        config,
        "gateway-overview",
        "Gateway overview",
        "Webhooks received by the gateway: answers by outcome and kind, latency, refusals, duplicates, "
        "store errors, deliveries onward and replicas.",
    ).variable(
        "sender",
        "Sender",
        f"label_values(gateway_webhook_requests_total{{{SEL}}}, sender)",
        "Senders of GATEWAY_SENDERS_FILE (default without one), and unknown for webhooks no sender's "
        "credentials verified; filters the Senders row.",
    )
    board.row(
        "Health",
        stat(
            "Replicas up",
            "Gateway replicas Prometheus scrapes successfully. Fewer than expected: see GatewayDown.",
            "none",
            [query(f"sum(up{{{SEL}}})", "up")],
            thresholds=((1, "green"),),
            base="red",
        ),
        stat(
            "Webhooks per second",
            "Every webhook the gateway answered, whatever the answer.",
            "reqps",
            [query(REQUESTS, "webhooks")],
        ),
        stat(
            "Accepted share",
            "Share of webhooks answered 200 (applied, duplicate or stale); the rest were refused.",
            "percentunit",
            [query(f"{accepted} / {REQUESTS}", "accepted")],
            thresholds=((0.9, "orange"), (0.95, "green")),
            base="red",
        ),
        stat(
            "Jobs in progress",
            "Jobs in a non-terminal status, from the job store (every replica reports the same count).",
            "short",
            [query(f"sum(max by (kind, status) (gateway_jobs_in_progress{{{SEL}}}))", "in progress")],
        ),
    )
    board.row(
        "Traffic and latency",
        timeseries(
            "Webhooks by outcome and kind",
            "Webhooks per second by job kind and the gateway's answer: applied, duplicate and stale are 200s; "
            "the others are refusals (4xx) or the store being unavailable (503).",
            "reqps",
            [query(_rate("gateway_webhook_requests_total", by="kind, outcome"), "{{kind}} {{outcome}}")],
            stacked=True,
        ),
        timeseries(
            "Webhook latency",
            "Time from a webhook's arrival to its answer, 50th/95th/99th percentiles from the histogram. "
            f"Dots are exemplars: click one to open its trace. The alert fires above {config.latency_p99_seconds:g}s "
            "at p99.",
            "s",
            [query(quantile(q, latency, SEL, RI), f"p{round(q * 100)}", exemplar=True) for q in (0.5, 0.95, 0.99)],
            thresholds=((config.latency_p99_seconds, "red"),),
        ),
    )
    board.row(
        "Senders",
        timeseries(
            "Webhooks by sender and outcome",
            "Webhooks per second by the sender whose credentials verified, and the gateway's answer; unknown: "
            "refused before any sender's credentials verified (401, or a 429 of the per-address limit). A "
            "sender's own budget refuses with rate_limited, a kind it may not post with unauthorized (403), a "
            "job of another sender with conflict (409).",
            "reqps",
            [query(_rate("gateway_webhook_requests_total", SENDER, by="sender, outcome"), "{{sender}} {{outcome}}")],
            stacked=True,
        ),
        timeseries(
            "Jobs finished by sender and result",
            "Jobs reaching a terminal status per second, by the sender that reported it and the result: which "
            "backend or partner fails.",
            "cps",
            [query(_rate("gateway_jobs_finished_total", SENDER, by="sender, result"), "{{sender}} {{result}}")],
            stacked=True,
        ),
    )
    board.row(
        "Refusals",
        timeseries(
            "Rejected webhooks, share by outcome",
            "Share of all webhooks refused as invalid (400), conflicting with a job of another kind (409), "
            "rate-limited (429), too large (413) or of the wrong content type (415). The dashed line is the "
            "rejection alert's threshold (invalid and rate-limited only).",
            "percentunit",
            [query(f"{refused} / on () group_left () {REQUESTS}", "{{outcome}}")],
            thresholds=((config.rejection_ratio, "red"),),
        ),
        timeseries(
            "Unauthorized webhooks, share by reason",
            "Share of all webhooks refused with 401, by reason: missing credentials, wrong secret, bad or "
            "malformed signature, expired timestamp. The sender only ever sees 401; this is where the reason "
            "shows. The dashed line is the authentication alert's threshold.",
            "percentunit",
            [query(f"{unauthorized} / on () group_left () {REQUESTS}", "{{reason}}")],
            thresholds=((config.auth_failure_ratio, "red"),),
        ),
        timeseries(
            "Duplicates and stale events",
            "Deliveries answered 200 without changing anything: duplicates (a retry or a re-sent event) and "
            "stale events (an older status, or anything after a terminal one). A rise means a sender retries "
            "too eagerly or the backend reorders events.",
            "reqps",
            [query(repeated, "{{kind}} {{outcome}}")],
            span=8,
        ),
        timeseries(
            "Store errors",
            "Failed store calls per second by store and operation; each one answered 503 or skipped a gauge "
            "refresh. Zero when the stores are healthy.",
            "cps",
            [
                query(
                    f"{_rate('gateway_store_errors_total', by='store, operation')} "
                    'or label_replace(vector(0), "store", "none", "", "")',
                    "{{store}} {{operation}}",
                )
            ],
            span=8,
        ),
        timeseries(
            "Rate limiter decisions",
            "The rate limiter's decisions per second: allowed, limited (answered 429) or error (its store "
            "failed; GATEWAY_RATE_LIMIT_ON_ERROR decided). No data when GATEWAY_RATE_LIMIT is unset: nothing "
            "is limited.",
            "reqps",
            [query(_rate("gateway_rate_limit_decisions_total", by="result"), "{{result}}")],
            stacked=True,
            span=8,
        ),
    )
    board.row(
        "Jobs",
        timeseries(
            "Jobs in progress by status",
            "Jobs in each non-terminal status, from the job store (replicas report the same value: max, not sum).",
            "short",
            [query(f"max by (kind, status) (gateway_jobs_in_progress{{{SEL}}})", "{{kind}} {{status}}")],
            stacked=True,
        ),
        timeseries(
            "Oldest job in progress",
            "Age of the oldest job still in a non-terminal status, per kind. Above the dashed line the "
            "GatewayJobsStuck alert fires.",
            "s",
            [query(f"max by (kind) (gateway_job_oldest_in_progress_seconds{{{SEL}}})", "{{kind}}")],
            thresholds=((config.stuck_job_seconds, "red"),),
        ),
    )
    board.row(
        "Forwarding",
        timeseries(
            "Deliveries by result",
            "Delivery attempts per second of applied events sent onward (HTTP forwarding, NATS JetStream), by "
            "result: delivered, retried (a timeout, a connection error, a 5xx, 408 or 429; tried again later) "
            "or dead (refused for good, or the retry schedule ran out). No data when no sink is configured.",
            "ops",
            [query(_rate("gateway_deliveries_total", by="sink, result"), "{{result}} {{sink}}")],
            stacked=True,
            span=8,
        ),
        timeseries(
            "Delivery latency",
            "Time one delivery attempt takes, from sending to the receiver's answer (or the timeout), "
            "50th/95th/99th percentiles from the histogram.",
            "s",
            [
                query(quantile(q, "gateway_delivery_duration_seconds", SEL, RI), f"p{round(q * 100)}")
                for q in (0.5, 0.95, 0.99)
            ],
            span=8,
        ),
        timeseries(
            "New dead letters",
            "Deliveries that went to the dead letters, per sink: they wait for a replay (gateway deliveries "
            "replay). Any at all raises GatewayDeliveryDeadLetters.",
            "short",
            [
                query(
                    f"sum by (sink) (increase(gateway_deliveries_total{{{DEAD}}}[{RI}]))",
                    "dead {{sink}}",
                )
            ],
            span=8,
        ),
        timeseries(
            "Delivery backlog",
            "Deliveries pending in the outbox, per sink (every replica reports the same value: max, not sum). "
            "Above the dashed line, and still growing, GatewayDeliveryBacklogGrowing fires.",
            "short",
            [query(f"max by (sink) (gateway_delivery_backlog{{{SEL}}})", "pending {{sink}}")],
            thresholds=((config.delivery_backlog_min, "red"),),
        ),
        timeseries(
            "Oldest pending delivery",
            "Age of the oldest delivery still pending, per sink: how long the receiver has missed an event. "
            "Above the dashed line GatewayDeliveryPendingTooLong fires.",
            "s",
            [query(f"max by (sink) (gateway_delivery_oldest_pending_seconds{{{SEL}}})", "oldest {{sink}}")],
            thresholds=((config.delivery_pending_seconds, "red"),),
        ),
    )
    board.row(
        "Process and telemetry",
        timeseries(
            "Clock skew of signed webhooks",
            "webhook-timestamp minus the gateway's clock (median and 1st/99th percentiles). Beyond the "
            "tolerance (WEBHOOK_TOLERANCE_SECONDS) signed webhooks are refused as expired.",
            "s",
            [
                query(quantile(q, "gateway_webhook_clock_skew_seconds", SEL, RI), f"p{round(q * 100)}")
                for q in (0.01, 0.5, 0.99)
            ],
            span=8,
            minimum=None,  # a sender's clock may be behind ours: negative skew
        ),
        timeseries(
            "Idempotency keys and dropped spans",
            "Keys held by each replica's idempotency store (bounded by GATEWAY_IDEMPOTENCY_MAX_KEYS), and trace "
            "spans dropped per second because the exporter could not keep up.",
            "short",
            [
                query(f"gateway_idempotency_keys{{{SEL}}}", "keys {{instance}}"),
                query(_rate("gateway_spans_dropped_total", by="instance"), "spans dropped/s {{instance}}"),
            ],
            span=8,
        ),
        timeseries(
            "CPU and memory",
            "CPU used by each gateway process (100% = one full core) and its resident memory (right axis).",
            "percentunit",
            [
                query(f"rate(process_cpu_seconds_total{{{SEL}}}[{RI}])", "cpu {{instance}}"),
                query(f"process_resident_memory_bytes{{{SEL}}}", "memory {{instance}}"),
            ],
            span=8,
        ).override_by_regexp(
            "^memory .*",
            [
                DynamicConfigValue(id_val="unit", value="bytes"),
                DynamicConfigValue(id_val="custom.axisPlacement", value="right"),
            ],
        ),
    )
    return board.to_dict()
