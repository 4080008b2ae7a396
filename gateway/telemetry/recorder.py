"""Stage 8: record what happened to a webhook in metrics, on its span, and in one log line."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.trace import INVALID_SPAN

from gateway.model import Outcome
from gateway.senders import DEFAULT_SENDER, UNKNOWN_SENDER
from gateway.telemetry.logs import direct_info

if TYPE_CHECKING:
    from prometheus_client.metrics import Counter, Histogram

    from gateway.answers import Accepted, AuthFailure, WebhookRefused
    from gateway.model import EventResult, JobEvent, Status, StoreUnavailable
    from gateway.telemetry.metrics import Metrics

__all__ = ("Telemetry",)

_FinishedChildren = tuple["Counter", "Histogram", "Histogram"]

logger = logging.getLogger("gateway.webhook")


class Telemetry:
    """Everything the pipeline reports, in one place, so the pipeline only says what happened."""

    def __init__(self, metrics: Metrics, *, traced: bool = True) -> None:
        self._metrics = metrics
        self._traced = traced
        """Whether any request can have a recording span (for attributes and exemplars); none without an
        exporter, and then the current span is not looked up."""
        self._finished: dict[tuple[str, str, str, str], _FinishedChildren] = {}
        self._images: dict[str, Counter] = {}
        """``gateway_images`` children by model (a bounded set, as ``_finished``)."""
        self._write_line = direct_info(logger)
        """The webhook's log line straight to the JSON handler, when logging is set up that way."""

    def auth_failed(self, reason: AuthFailure, sender: str = UNKNOWN_SENDER) -> None:
        self._metrics.auth_failure_children[reason, sender].inc()

    def clock_skew(self, seconds: float) -> None:
        self._metrics.clock_skew.observe(seconds)

    def store_failed(self, error: StoreUnavailable) -> None:
        self._metrics.store_errors.labels(error.store, error.operation).inc()

    def webhook_refused(
        self, kind: str, rejection: WebhookRefused, seconds: float, sender: str = UNKNOWN_SENDER
    ) -> None:
        self._answered(kind, rejection.refusal, seconds, rejection.job_id, None, rejection.status_code, sender)

    def accepted(
        self,
        kind: str,
        event: JobEvent,
        answer: Accepted,
        applied: EventResult | None,
        seconds: float,
        sender: str = DEFAULT_SENDER,
    ) -> None:
        self._answered(kind, answer.outcome, seconds, event.job_id, answer.status, 200, sender)
        if applied is not None and applied.moved:
            self._moved(event, applied, sender)

    def ignored(self, kind: str, seconds: float, sender: str) -> None:
        """A provider's callback acknowledged and recorded nowhere (outcome ``ignored``)."""
        self._answered(kind, Outcome.IGNORED, seconds, None, None, 200, sender)

    def _answered(
        self,
        kind: str,
        outcome: str,
        seconds: float,
        job_id: str | None,
        status: Status | None,
        http_status: int,
        sender: str,
    ) -> None:
        span = trace.get_current_span() if self._traced else INVALID_SPAN
        exemplar = None
        if span.is_recording():
            context = span.get_span_context()
            exemplar = {"trace_id": format(context.trace_id, "032x")}
            span.set_attribute("gateway.kind", kind)
            span.set_attribute("gateway.outcome", outcome)
            span.set_attribute("gateway.sender", sender)
            if job_id is not None:
                span.set_attribute("gateway.job_id", job_id)
            if status is not None:
                span.set_attribute("gateway.status", status)
        count, duration = self._metrics.request_children[kind, outcome, sender]
        count.inc()
        duration.observe(seconds, exemplar)
        if not logger.isEnabledFor(logging.INFO):
            return
        fields: dict[str, object] = {
            "kind": kind,
            "job_id": job_id,
            "status": status,
            "outcome": outcome,
            "sender": sender,
            "http_status": http_status,
            "duration_ms": round(seconds * 1000, 3),
        }
        if self._write_line is not None:
            self._write_line(f"webhook {outcome}", fields)
        else:
            logger.info("webhook %s", outcome, extra=fields)

    def _moved(self, event: JobEvent, applied: EventResult, sender: str) -> None:
        metrics = self._metrics
        metrics.transition_children[(event.kind, applied.status)].inc()
        if not applied.status.terminal:
            return
        model = metrics.models(applied.model)
        finished, job_duration, generation = self._finished_children(event.kind, model, applied.status, sender)
        finished.inc()
        if applied.first_seen_at is not None:
            job_duration.observe((event.received_at - applied.first_seen_at).total_seconds())
        generation_time = event.metadata.generation_time_seconds if event.metadata is not None else None
        if generation_time is not None:
            span = trace.get_current_span() if self._traced else INVALID_SPAN
            exemplar = {"trace_id": format(span.get_span_context().trace_id, "032x")} if span.is_recording() else None
            generation.observe(generation_time, exemplar)
        if event.images:
            images = self._images.get(model)
            if images is None:  # created on the first image, as labels() would: no zero series before it
                images = self._images[model] = metrics.images.labels(model)
            images.inc(event.images)

    def _finished_children(self, kind: str, model: str, result: str, sender: str) -> _FinishedChildren:
        """Label children for finished jobs, resolved once per (kind, model, result, sender): a bounded set."""
        key = (kind, model, result, sender)
        children = self._finished.get(key)
        if children is None:
            metrics = self._metrics
            children = self._finished[key] = (
                metrics.jobs_finished.labels(kind, model, result, sender),
                metrics.job_duration.labels(kind, result),
                metrics.generation_duration.labels(kind, model),
            )
        return children
