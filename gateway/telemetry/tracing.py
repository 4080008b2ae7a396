"""OpenTelemetry tracing, configured only by the standard ``OTEL_*`` variables.

- ``OTEL_TRACES_SAMPLER`` / ``OTEL_TRACES_SAMPLER_ARG``: read by the SDK (default
  ``parentbased_always_on``: a sender's sampling decision is followed, a root request is sampled).
- ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``..._TRACES_ENDPOINT``): where spans go over OTLP;
  ``OTEL_EXPORTER_OTLP_PROTOCOL`` must be ``http/protobuf``. Unset (or ``OTEL_TRACES_EXPORTER=none``):
  no span is recorded, since nothing would receive it; the trace context still flows, so log lines
  carry the sender's trace id, and no exemplar points at a trace that does not exist.
- ``OTEL_BSP_*``: the batch processor's queue, batch size and delays, read by the SDK.

Export runs on the batch processor's own thread: an exporter that is down or slow never delays a
webhook. What it cannot take is dropped and counted in ``gateway_spans_dropped_total``.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING

from opentelemetry.environment_variables import OTEL_TRACES_EXPORTER
from opentelemetry.sdk.environment_variables import (
    OTEL_BSP_MAX_QUEUE_SIZE,
    OTEL_EXPORTER_OTLP_ENDPOINT,
    OTEL_EXPORTER_OTLP_PROTOCOL,
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
    OTEL_EXPORTER_OTLP_TRACES_PROTOCOL,
)
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

from gateway import __version__
from gateway.config import ConfigError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import Span
    from prometheus_client import Counter, Gauge

__all__ = ("DropCounter", "check_tracing_env", "tracer_provider_from_env")

_DEFAULT_QUEUE_SIZE = 2048


def tracer_provider_from_env(
    spans_dropped: Counter, environ: Mapping[str, str] | None = None, *, spans_queued: Gauge | None = None
) -> TracerProvider:
    """A tracer provider as the ``OTEL_*`` variables describe; raise :class:`ConfigError` on a bad one.

    ``spans_queued``, if given, reports the export queue's length when scraped."""
    env = os.environ if environ is None else environ
    resource = Resource.create({SERVICE_VERSION: __version__})
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "gateway"}))
    exporter = _exporter(env)
    if exporter is None:
        # Nothing would receive recorded spans: keep only the trace context (so logs carry the sender's
        # trace id) and record nothing, which costs next to nothing on the hot path.
        return TracerProvider(resource=resource, sampler=ALWAYS_OFF)
    provider = TracerProvider(resource=resource)
    counter = DropCounter(spans_dropped, _queue_size(env))
    if spans_queued is not None:
        spans_queued.set_function(lambda: counter.queued)
    provider.add_span_processor(counter)
    provider.add_span_processor(BatchSpanProcessor(counter.watch(exporter)))
    return provider


def check_tracing_env(environ: Mapping[str, str] | None = None) -> None:
    """Raise :class:`ConfigError` for an ``OTEL_*`` setting the gateway cannot honour, before serving."""
    env = os.environ if environ is None else environ
    _exporter(env)
    _queue_size(env)


def _queue_size(env: Mapping[str, str]) -> int:
    value = env.get(OTEL_BSP_MAX_QUEUE_SIZE, str(_DEFAULT_QUEUE_SIZE))
    if not value.isdecimal() or int(value) < 1:
        raise ConfigError(f"OTEL_BSP_MAX_QUEUE_SIZE must be a positive integer, got {value!r}")
    return int(value)


def _exporter(env: Mapping[str, str]) -> SpanExporter | None:
    if env.get(OTEL_TRACES_EXPORTER, "otlp").strip().lower() == "none":
        return None
    if not (env.get(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) or env.get(OTEL_EXPORTER_OTLP_ENDPOINT)):
        return None
    protocol = env.get(OTEL_EXPORTER_OTLP_TRACES_PROTOCOL) or env.get(OTEL_EXPORTER_OTLP_PROTOCOL) or "http/protobuf"
    if protocol != "http/protobuf":
        raise ConfigError(f"OTEL_EXPORTER_OTLP_PROTOCOL: only 'http/protobuf' is supported, got {protocol!r}")
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


class DropCounter(SpanProcessor):
    """Counts spans the batch processor drops, knowing only its documented behaviour.

    The batch processor keeps at most ``OTEL_BSP_MAX_QUEUE_SIZE`` spans and drops one for every span
    that arrives while it is full; an export that fails loses its whole batch. This processor, placed
    before it, tracks how many spans wait in that queue and counts both kinds of loss.
    """

    def __init__(self, dropped: Counter, queue_size: int) -> None:
        self._dropped = dropped
        self._queue_size = queue_size
        self._queued = 0
        self._lock = threading.Lock()

    @property
    def queued(self) -> int:
        """Spans waiting in the batch processor's queue now."""
        return self._queued

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        return None

    def on_end(self, span: ReadableSpan) -> None:
        if span.context is None or not span.context.trace_flags.sampled:
            return
        with self._lock:
            if self._queued >= self._queue_size:
                self._dropped.inc()
            else:
                self._queued += 1

    def watch(self, exporter: SpanExporter) -> SpanExporter:
        """Wrap ``exporter`` so that batches leaving the queue, and failed ones, are counted."""
        return _WatchedExporter(exporter, self)

    def _taken(self, count: int) -> None:
        with self._lock:
            self._queued = max(0, self._queued - count)

    def _lost(self, count: int) -> None:
        self._dropped.inc(count)


class _WatchedExporter(SpanExporter):
    def __init__(self, inner: SpanExporter, counter: DropCounter) -> None:
        self._inner = inner
        self._counter = counter

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        # The batch processor took these spans out of its queue before calling us: free their places
        # now, or a slow export would look like a full queue.
        self._counter._taken(len(spans))
        try:
            result = self._inner.export(spans)
        except Exception:
            self._counter._lost(len(spans))
            raise
        if result is not SpanExportResult.SUCCESS:
            self._counter._lost(len(spans))
        return result

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)
