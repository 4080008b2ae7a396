"""Every Prometheus metric the gateway exports, defined once, on an injected registry.

Names and labels are a contract with the dashboards and alert rules in ``dashboards/``: change them
there too. Every label comes from a closed set (kinds, outcomes, statuses, reasons, a bounded set of
model names, the senders declared in ``GATEWAY_SENDERS_FILE`` plus ``unknown``); a job id or a client
address is never a label.

The metrics a webhook or a delivery updates are :class:`LoopCounter` and :class:`LoopHistogram`, exposed
exactly as ``Counter`` and ``Histogram`` are but without a lock: update them from the event loop's
thread only. Metrics updated from other threads (spans dropped by the export thread) are
prometheus_client's own.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client import metrics as stock
from prometheus_client.samples import Exemplar

from gateway import __version__
from gateway.answers import AuthFailure, RefusalReason
from gateway.model import Outcome, Status
from gateway.senders import DEFAULT_SENDER, UNKNOWN_SENDER

if TYPE_CHECKING:
    from collections.abc import Iterable

    from prometheus_client import CollectorRegistry

__all__ = (
    "DELIVERY_RESULTS",
    "OUTCOMES",
    "SINKS",
    "UNKNOWN_KIND",
    "LoopCounter",
    "LoopHistogram",
    "Metrics",
    "ModelLabels",
)

OUTCOMES: tuple[str, ...] = (*(o.value for o in Outcome), *(r.value for r in RefusalReason))
"""Every value of the ``outcome`` label: what the pipeline answered."""

SINKS = ("http", "nats")
"""Every value of the ``sink`` label: where the outbox delivers."""
DELIVERY_RESULTS = ("delivered", "retried", "dead")
"""Every value of the ``result`` label of ``gateway_deliveries_total``."""

REQUEST_BUCKETS = (0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
GENERATION_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 180.0, 300.0, 450.0, 600.0)
JOB_BUCKETS = (1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0, 86400.0)
SKEW_BUCKETS = (-300.0, -60.0, -10.0, -1.0, -0.1, 0.0, 0.1, 1.0, 10.0, 60.0, 300.0)

UNKNOWN_KIND = "unknown"
"""The ``kind`` label of a webhook posted to a path that is no kind's route."""
UNKNOWN_MODEL = "unknown"
OTHER_MODEL = "other"


class _Value:
    """One sample's value and exemplar, read and written without a lock (prometheus_client's value
    interface: ``inc``, ``set``, ``get``, ``set_exemplar``, ``get_exemplar``)."""

    __slots__ = ("exemplar", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.exemplar: Exemplar | None = None

    def inc(self, amount: float) -> None:
        self.value += amount

    def set(self, value: float, timestamp: float | None = None) -> None:
        self.value = value

    def get(self) -> float:
        return self.value

    def set_exemplar(self, exemplar: Exemplar) -> None:
        self.exemplar = exemplar

    def get_exemplar(self) -> Exemplar | None:
        return self.exemplar


class LoopCounter(Counter):
    """A ``Counter`` whose children count without a lock: update it from the event loop's thread only.

    ``inc`` refuses a negative amount (``ValueError``) and records an exemplar as ``Counter`` does;
    a scrape reads the value as it stands.
    """

    def _metric_init(self) -> None:
        self._count = _Value()
        self._value = self._count  # read by Counter's own exposition
        self._created = time.time()

    def inc(self, amount: float = 1, exemplar: dict[str, str] | None = None) -> None:
        if amount < 0 or exemplar:
            super().inc(amount, exemplar)  # the refusal, or the exemplar, exactly as Counter does it
            return
        self._count.value += amount


class LoopHistogram(Histogram):
    """A ``Histogram`` whose children observe without a lock: update it from the event loop's thread only.

    An observation goes to the first bucket whose bound it does not exceed (a NaN to none, its sum
    still counted) with its exemplar, as ``Histogram.observe`` does; a scrape reads the buckets as they
    stand.
    """

    def _metric_init(self) -> None:
        self._created = time.time()
        self._total = _Value()
        self._counts = [_Value() for _ in self._upper_bounds]
        self._sum = self._total  # read by Histogram's own exposition
        self._buckets = self._counts

    def observe(self, amount: float, exemplar: dict[str, str] | None = None) -> None:
        self._total.value += amount
        if amount != amount:  # NaN: under no bound
            return
        bucket = self._counts[bisect_left(self._upper_bounds, amount)]
        bucket.value += 1
        if exemplar:
            stock._validate_exemplar(exemplar)  # type: ignore[attr-defined,no-untyped-call]  # as Histogram does
            bucket.exemplar = Exemplar(exemplar, amount, time.time())


class ModelLabels:
    """Bounds the ``model`` label: an allow-list, or the first ``limit`` distinct names, then ``other``.

    Model names come from the payload, so without a bound a buggy or hostile sender could create an
    unbounded number of time series.
    """

    __slots__ = ("_allowed", "_limit", "_seen")

    def __init__(self, allowed: Iterable[str] = (), limit: int = 20) -> None:
        self._allowed = frozenset(allowed)
        self._limit = limit
        self._seen: set[str] = set()

    def __call__(self, model: str | None) -> str:
        if model is None:
            return UNKNOWN_MODEL
        if self._allowed:
            return model if model in self._allowed else OTHER_MODEL
        if model in self._seen:
            return model
        if len(self._seen) < self._limit:
            self._seen.add(model)
            return model
        return OTHER_MODEL


class Metrics:
    """The gateway's metrics, registered on ``registry``."""

    def __init__(
        self,
        registry: CollectorRegistry,
        kinds: Iterable[str],
        models: ModelLabels,
        senders: Iterable[str] = (DEFAULT_SENDER,),
    ) -> None:
        """``senders``: the declared senders' names (``unknown`` is added, for requests none of them sent)."""
        self.models = models
        kinds = (*kinds, UNKNOWN_KIND)
        self.senders = senders = (*senders, UNKNOWN_SENDER)
        self.webhook_requests = LoopCounter(
            "gateway_webhook_requests",
            "Webhooks received, by job kind, what the gateway answered, and sender (unknown: no credential verified).",
            ["kind", "outcome", "sender"],
            registry=registry,
        )
        self.webhook_request_duration = LoopHistogram(
            "gateway_webhook_request_duration_seconds",
            "Time from a webhook's arrival to its answer, by job kind and outcome.",
            ["kind", "outcome"],
            buckets=REQUEST_BUCKETS,
            registry=registry,
        )
        self.job_transitions = LoopCounter(
            "gateway_job_transitions",
            "Applied status transitions (a job's first event included; progress updates excluded).",
            ["kind", "status"],
            registry=registry,
        )
        self.jobs_finished = LoopCounter(
            "gateway_jobs_finished",
            "Jobs that reached a terminal status: the SLI of the failed-generation alerts.",
            ["kind", "model", "result", "sender"],
            registry=registry,
        )
        self.generation_duration = LoopHistogram(
            "gateway_generation_duration_seconds",
            "generation_time_seconds reported by the backend when a job finished.",
            ["kind", "model"],
            buckets=GENERATION_BUCKETS,
            registry=registry,
        )
        self.job_duration = LoopHistogram(
            "gateway_job_duration_seconds",
            "Time from the first event the gateway saw for a job to its terminal event.",
            ["kind", "result"],
            buckets=JOB_BUCKETS,
            registry=registry,
        )
        self.auth_failures = LoopCounter(
            "gateway_webhook_auth_failures",
            "Webhooks refused with 401, by reason (the sender is only ever told 401) and sender (unknown unless "
            "a signature verified but expired).",
            ["reason", "sender"],
            registry=registry,
        )
        self.clock_skew = LoopHistogram(
            "gateway_webhook_clock_skew_seconds",
            "Signed webhooks' webhook-timestamp minus the gateway's clock at arrival.",
            buckets=SKEW_BUCKETS,
            registry=registry,
        )
        self.jobs_in_progress = Gauge(
            "gateway_jobs_in_progress",
            "Jobs in a non-terminal status, from the job store (every replica reports the same value).",
            ["kind", "status"],
            registry=registry,
        )
        self.job_oldest_in_progress = Gauge(
            "gateway_job_oldest_in_progress_seconds",
            "Age of the oldest job still in a non-terminal status (0 when there is none).",
            ["kind"],
            registry=registry,
        )
        self.spans_dropped = Counter(
            "gateway_spans_dropped",
            "Trace spans dropped: the export queue was full or the exporter failed.",
            registry=registry,
        )
        self.images = LoopCounter(
            "gateway_images",
            "Images delivered by completed image jobs.",
            ["model"],
            registry=registry,
        )
        self.idempotency_keys = Gauge(
            "gateway_idempotency_keys",
            "Keys remembered by the idempotency store.",
            registry=registry,
        )
        self.store_errors = Counter(
            "gateway_store_errors",
            "Failed store calls, by store and operation.",
            ["store", "operation"],
            registry=registry,
        )
        self.rate_limit_decisions = LoopCounter(
            "gateway_rate_limit_decisions",
            "Rate limiter decisions: allowed, limited, or error (its store failed), by sender (unknown: refused "
            "before a sender was identified, or never identified).",
            ["result", "sender"],
            registry=registry,
        )
        self.deliveries = LoopCounter(
            "gateway_deliveries",
            "Delivery attempts of applied events, by sink and result (delivered, retried, dead).",
            ["sink", "result"],
            registry=registry,
        )
        self.delivery_duration = LoopHistogram(
            "gateway_delivery_duration_seconds",
            "Time one delivery attempt took, by sink.",
            ["sink"],
            buckets=REQUEST_BUCKETS,
            registry=registry,
        )
        self.delivery_backlog = Gauge(
            "gateway_delivery_backlog",
            "Deliveries pending (due, retrying, or waiting for an earlier event of their job), by sink.",
            ["sink"],
            registry=registry,
        )
        self.delivery_oldest_pending = Gauge(
            "gateway_delivery_oldest_pending_seconds",
            "Age of the oldest pending delivery, by sink (0 when there is none).",
            ["sink"],
            registry=registry,
        )
        self.delivery_sink_disabled = Gauge(
            "gateway_delivery_sink_disabled",
            "1 while a sink is disabled (its endpoint answered 410 Gone) until an operator re-enables it.",
            ["sink"],
            registry=registry,
        )
        self.spans_queued = Gauge(
            "gateway_spans_queued",
            "Spans waiting in the export queue (at most OTEL_BSP_MAX_QUEUE_SIZE; 0 without an exporter).",
            registry=registry,
        )
        self.rate_limit_keys = Gauge(
            "gateway_rate_limit_keys",
            "Senders the in-memory rate limiter remembers (at most 100 000; 0 without a limit or with Redis).",
            registry=registry,
        )
        self.retention_pruned = Counter(
            "gateway_retention_pruned",
            "Records deleted by retention (GATEWAY_RETENTION_DAYS), by what they were: jobs (with their history), "
            "deliveries (delivered ones).",
            ["target"],
            registry=registry,
        )
        self.jwks_state = Gauge(
            "gateway_jwks_state",
            "1 for the state of each jwks_url sender's key set: fresh, stale (its endpoint fails; the last good "
            "set verifies), unavailable (none fetched yet; its webhooks are answered 503).",
            ["sender", "state"],
            registry=registry,
        )
        build_info = Gauge(
            "gateway_build_info",
            "Always 1; the gateway's version as a label.",
            ["version"],
            registry=registry,
        )
        build_info.labels(__version__).set(1)

        # Children of closed label sets, resolved once (the hot path then skips .labels()).
        durations = {
            (kind, outcome): self.webhook_request_duration.labels(kind, outcome)
            for kind in kinds
            for outcome in OUTCOMES
        }
        self.request_children = {
            (kind, outcome, sender): (self.webhook_requests.labels(kind, outcome, sender), durations[kind, outcome])
            for kind in kinds
            for outcome in OUTCOMES
            for sender in senders
        }
        self.transition_children = {
            (kind, status): self.job_transitions.labels(kind, status) for kind in kinds for status in Status
        }
        self.auth_failure_children = {
            (reason, sender): self.auth_failures.labels(reason, sender) for reason in AuthFailure for sender in senders
        }
        for kind in kinds:
            for status in Status:
                if not status.terminal:
                    self.jobs_in_progress.labels(kind, status)
            self.job_oldest_in_progress.labels(kind)

    def forwarding(self, sinks: Iterable[str]) -> None:
        """Create the delivery series of the enabled ``sinks`` at zero (only when forwarding is on)."""
        for sink in sinks:
            for result in DELIVERY_RESULTS:
                self.deliveries.labels(sink, result)
            self.delivery_duration.labels(sink)
            self.delivery_backlog.labels(sink)
            self.delivery_oldest_pending.labels(sink)
            self.delivery_sink_disabled.labels(sink)
